"""Promote against a real MLflow server and a real tritonserver: the alias is set (read back), the version tagged,
the Triton repository written; over the wire the version is served before the alias moves; a failed rollout keeps
the alias; two runs gated against the same champion cannot both promote (compare-and-swap), also when the
champion moves during the rollout (then the servers go back to what the registry names)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from triton_server import all_on

pytest_plugins = ["conftest_mlflow", "conftest_triton"]

M = "ndcg@10"


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _register_and_gate(tmp_path, tag, uri, name, model_dir, onnx_dir, validation_dir, evaluation_dir_factory,
                       chunks_dir, pairs_dir, finetuned=0.90, base=0.80, alias="champion"):
    """Run the real register and gate stages; return (registry_dir, decision_dir, decision)."""
    from embedforge.config import EvaluateConfig, GateConfig, RegisterConfig
    from embedforge.stages import gate
    from embedforge.stages import register as registry

    ev = evaluation_dir_factory(tmp_path / f"evaluation-{tag}", {M: finetuned}, {M: base})
    reg = tmp_path / f"registry-{tag}"
    registry.run(model_dir, onnx_dir, ev, validation_dir, reg, RegisterConfig(model_name=name), uri, params={})
    dec = tmp_path / f"decision-{tag}"
    d = gate.run(ev, reg, chunks_dir, pairs_dir, dec, GateConfig(alias=alias), EvaluateConfig(), uri).result
    return reg, dec, d


def test_promote_sets_alias_tags_version_and_writes_triton_repo(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                                validation_dir, evaluation_dir_factory, chunks_dir,
                                                                pairs_dir, mlflow_uri):
    import onnxruntime as ort

    from embedforge.config import TritonConfig
    from embedforge.serving.repository import served_version, validate_config
    from embedforge.stages import promote

    reg, dec, d = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    assert d.promote is True
    repo = tmp_path / "triton"
    triton_cfg = TritonConfig(model_name="embedder", instance_kind="KIND_CPU", max_batch_size=16)
    manifest = promote.run(dec, reg, tiny_onnx_dir, repo, triton_cfg, mlflow_uri)
    assert manifest.stage == "promote" and manifest.result.version == "1"

    client = _client(mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    tags = client.get_model_version(model_name, "1").tags
    assert tags["promoted_alias"] == "champion" and tags["promoted_metric"] == M
    assert float(tags["promoted_metric_value"]) == pytest.approx(0.90) and tags["promoted_over"] == "none"
    assert tags["promoted_at"].startswith("20")

    conf = validate_config((repo / "embedder" / "config.pbtxt").read_text())
    assert (conf.name, conf.platform, conf.max_batch_size) == ("embedder", "ensemble", 16)
    assert conf.parameters["registered_model"].string_value == model_name
    assert conf.parameters["registered_version"].string_value == "1"
    assert list(conf.output[0].dims) == [8] and list(conf.version_policy.specific.versions) == [1]
    vdir = repo / "embedder_onnx" / "1"
    assert (vdir / "model.onnx").is_file() and (repo / "embedder_tokenizer" / "1" / "tokenizer" / "tokenizer.json").is_file()
    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["embeddings"], {"input_ids": np.array([[101, 2054, 102]], dtype=np.int64),
                                       "attention_mask": np.ones((1, 3), dtype=np.int64)})
    assert emb.shape == (1, 8)

    rec = json.loads((repo / "promotion.json").read_text())
    assert rec["promoted"] is True and rec["alias"] == "champion" and rec["version"] == "1"
    assert rec["model_name"] == model_name and rec["triton_repo"] == str(repo) and rec["previous_version"] is None
    assert json.loads((repo / "manifest.json").read_text())["stage"] == "promote"

    # the next pipeline run: its gate re-evaluates v1 (the real, weak tiny model) and v2 wins -> alias moves
    reg2, dec2, d2 = _register_and_gate(tmp_path, "v2", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                        validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    assert d2.promote is True and d2.champion_version == "1" and d2.champion_value < 0.9
    promote.run(dec2, reg2, tiny_onnx_dir, repo, triton_cfg, mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert client.get_model_version(model_name, "2").tags["promoted_over"] == "v1"
    assert client.get_model_version_by_alias(model_name, "previous").version == "1"
    assert json.loads((repo / "promotion.json").read_text())["previous_version"] == "1"
    assert sorted(p.name for p in (repo / "embedder").iterdir()) == ["1", "2", "config.pbtxt"]
    assert served_version(repo, "embedder") == "2"


def test_refuses_a_non_promote_decision(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                        evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri):
    from embedforge.config import TritonConfig
    from embedforge.errors import InputError
    from embedforge.stages import promote

    reg, dec, d = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir,
                                     finetuned=0.50, base=0.80)
    assert d.promote is False
    with pytest.raises(InputError, match="says not to promote"):
        promote.run(dec, reg, tiny_onnx_dir, tmp_path / "triton", TritonConfig(), mlflow_uri)
    assert _client(mlflow_uri).get_registered_model(model_name).aliases == {}
    assert not (tmp_path / "triton").exists() or not any((tmp_path / "triton").iterdir())


def test_refuses_a_decision_about_another_version(tmp_path, tiny_onnx_dir):
    from embedforge.config import GateConfig, TritonConfig
    from embedforge.contracts import RegistryRecord, StageTimer
    from embedforge.errors import InputError
    from embedforge.stages import promote
    from embedforge.stages.gate import decide

    d = decide({M: 0.9}, {M: 0.8}, None, GateConfig(), challenger_version="7")
    StageTimer("gate").write_manifest(tmp_path / "decision", result=d)
    StageTimer("register").write_manifest(tmp_path / "registry", result=RegistryRecord(
        tracking_uri="", experiment_id="1", experiment="e", run_id="r", model_name="m", version="3", source="s",
        artifact_uri="a", primary_metric="ndcg@10", primary_metric_value=0.9))
    with pytest.raises(InputError, match="about version 7 but registry.json registered version 3"):
        promote.run(tmp_path / "decision", tmp_path / "registry", tiny_onnx_dir, tmp_path / "triton",
                    TritonConfig(), "http://127.0.0.1:9")  # refused before MLflow is contacted


def test_promote_moves_the_alias_the_gate_decided_on(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                                      evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri):
    """Promote has no alias setting of its own: the gate read the champion from ``gate.alias``, so that alias moves."""
    from embedforge.config import TritonConfig
    from embedforge.stages import promote

    reg, dec, d = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir, alias="production")
    assert d.promote and d.alias == "production"
    manifest = promote.run(dec, reg, tiny_onnx_dir, tmp_path / "triton", TritonConfig(), mlflow_uri)
    assert manifest.result.alias == "production"
    aliases = _client(mlflow_uri).get_registered_model(model_name).aliases
    assert aliases == {"production": "1"}  # champion untouched


def test_component_python_func(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir, evaluation_dir_factory,
                               chunks_dir, pairs_dir, mlflow_uri):
    from embedforge.components.promote.component import promote
    from kfp import dsl

    reg, dec, _ = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    repo = dsl.Artifact(uri=str(tmp_path / "repo"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    promote.python_func(decision=dsl.Artifact(uri=str(dec)), registry=dsl.Artifact(uri=str(reg)),
                        onnx_model=dsl.Model(uri=str(tiny_onnx_dir)), triton_config={},
                        tracking_uri=mlflow_uri, triton_repo=repo, metrics=metrics)
    assert (tmp_path / "repo" / "embedforge_embedder_onnx" / "1" / "model.onnx").is_file()
    assert metrics.metadata["promoted_version"] == 1 and metrics.metadata[M] == pytest.approx(0.90)
    assert repo.metadata == {"model_name": "embedforge_embedder", "version": "1"}
    assert _client(mlflow_uri).get_model_version_by_alias(model_name, "champion").version == "1"


# ------------------------------------------------------------------------------------------------ over the wire
def test_promote_serves_the_version_before_it_moves_the_alias(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                              validation_dir, evaluation_dir_factory, chunks_dir,
                                                              pairs_dir, mlflow_uri, triton, triton_cfg):
    from embedforge.serving.client import embed
    from embedforge.serving.rollout import reference_embedding
    from embedforge.stages import promote

    reg, dec, _ = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    live = tmp_path / "models"
    server = triton(live)
    promote.run(dec, reg, tiny_onnx_dir, tmp_path / "artifact", triton_cfg(live, server), mlflow_uri)
    assert server.ready() == all_on("1")
    rec = json.loads((tmp_path / "artifact" / "promotion.json").read_text())
    assert rec["published_to"] == str(live) and rec["rollout"]["replicas"][0]["mode"] == "explicit"
    assert rec["rollout"]["probe_cosine"] > 0.999
    client = _client(mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert client.get_model_version(model_name, "1").tags["served_by"] == f"{server.url} (embedder v1)"
    texts = ["how do I stop a loop"]
    np.testing.assert_allclose(embed(server.url, texts, model="embedder"),
                               reference_embedding(live, "embedder", "1", texts), atol=1e-5)


def test_failed_rollout_takes_the_version_back_and_keeps_the_alias(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                                   validation_dir, evaluation_dir_factory, chunks_dir,
                                                                   pairs_dir, mlflow_uri, triton, triton_cfg):
    """The server reads another folder than the one promote publishes into (a wrong PVC, say): the load fails,
    the live repository is left as it was (the version served before and its configs), and no alias moves."""
    from embedforge.errors import ServingError
    from embedforge.serving.repository import served_version, write_model_repository
    from embedforge.stages import promote

    reg, dec, _ = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    live = tmp_path / "models"
    write_model_repository(tiny_onnx_dir, live, triton_cfg(live), "7")  # what is served today
    before = (live / "embedder" / "config.pbtxt").read_text()
    server = triton(tmp_path / "server-reads-this")
    with pytest.raises(ServingError, match="could not load 'embedder_tokenizer'"):
        promote.run(dec, reg, tiny_onnx_dir, tmp_path / "artifact", triton_cfg(live, server),
                    mlflow_uri)
    assert sorted(p.name for p in (live / "embedder").iterdir()) == ["7", "config.pbtxt"]
    assert (live / "embedder" / "config.pbtxt").read_text() == before and served_version(live, "embedder") == "7"
    assert _client(mlflow_uri).get_registered_model(model_name).aliases == {}


def test_two_runs_gated_against_the_same_champion_cannot_both_promote(
        tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir, evaluation_dir_factory, chunks_dir,
        pairs_dir, mlflow_uri, triton, triton_cfg):
    from embedforge.stages import promote

    reg1, dec1, _ = _register_and_gate(tmp_path, "a", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                       validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    reg2, dec2, d2 = _register_and_gate(tmp_path, "b", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                        validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    assert d2.promote and d2.champion_version is None  # both gates saw no champion
    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server)
    promote.run(dec1, reg1, tiny_onnx_dir, tmp_path / "artifact-a", cfg, mlflow_uri)
    with pytest.raises(promote.PromotionConflict, match="another run promoted v1 meanwhile; re-run the gate"):
        promote.run(dec2, reg2, tiny_onnx_dir, tmp_path / "artifact-b", cfg, mlflow_uri)
    assert _client(mlflow_uri).get_model_version_by_alias(model_name, "champion").version == "1"
    assert server.ready() == all_on("1") and not (live / "embedder" / "2").exists()


@pytest.fixture
def v1_served_v2_gated(tmp_path, model_name, tiny_model, tiny_onnx_dir, export_dir, validation_dir,
                       evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri, triton, triton_cfg):
    """Run A promoted v1 over the wire; run B registered v2 (another model, seed 1) and its gate compared it
    against v1. Returns (server, cfg, gated) with ``gated(tag, onnx_dir)`` -> (registry, decision) of one more run."""
    from embedforge.stages import promote

    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server)

    def gated(tag, onnx_dir, finetuned=0.95):
        return _register_and_gate(tmp_path, tag, mlflow_uri, model_name, tiny_model, onnx_dir, validation_dir,
                                  evaluation_dir_factory, chunks_dir, pairs_dir, finetuned=finetuned)

    reg1, dec1, _ = gated("a", tiny_onnx_dir, 0.90)
    promote.run(dec1, reg1, tiny_onnx_dir, tmp_path / "artifact-a", cfg, mlflow_uri)
    onnx_b = export_dir(tmp_path / "export-b", seed=1)
    reg2, dec2, d2 = gated("b", onnx_b)
    assert d2.champion_version == "1" and d2.promote
    return server, cfg, gated, (reg2, dec2, onnx_b)


def test_a_concurrent_promotion_waits_for_the_lock_then_finds_the_champion_moved(
        tmp_path, model_name, tiny_onnx_dir, mlflow_uri, v1_served_v2_gated, monkeypatch):
    """Runs B (v2) and C (v3) are both gated against v1. C, another process, starts promoting while B's rollout
    runs: it waits for the promotion lock instead of interleaving (no second rollout into the live repository,
    no alias move between B's compare and B's set), then its compare sees v2 and it refuses. Serving ends on v2."""
    import subprocess
    import sys

    from embedforge.serving import rollout as serving
    from embedforge.stages import promote

    server, cfg, gated, (reg2, dec2, onnx_b) = v1_served_v2_gated
    reg3, dec3, d3 = gated("c", tiny_onnx_dir)
    assert d3.champion_version == "1" and d3.promote
    real_roll_out = serving.roll_out
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO);"
              "from embedforge.config import TritonConfig; from embedforge.stages import promote;"
              f"promote.run({str(dec3)!r}, {str(reg3)!r}, {str(tiny_onnx_dir)!r}, {str(tmp_path / 'artifact-c')!r},"
              f"TritonConfig.model_validate_json({cfg.model_dump_json()!r}), {mlflow_uri!r})")
    started: list[subprocess.Popen] = []

    def roll_out_while_c_starts(urls, repo, name, version, **kw):
        result = real_roll_out(urls, repo, name, version, **kw)
        if version == "2":  # B has rolled out v2 and holds the lock; C starts now and must wait for it
            c = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
            started.append(c)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and c.poll() is None and not any(
                    f.name.startswith(".embedforge-promote-") for f in Path(cfg.repository_dir).iterdir()):
                time.sleep(0.2)
            time.sleep(5)  # C is importing and then blocks on the lock; it must not finish while B holds it
            assert c.poll() is None, c.communicate()[0]
        return result

    monkeypatch.setattr(serving, "roll_out", roll_out_while_c_starts)
    promote.run(dec2, reg2, onnx_b, tmp_path / "artifact-b", cfg, mlflow_uri)
    (c,) = started
    out, _ = c.communicate(timeout=600)
    assert c.returncode != 0 and "another run promoted v2 meanwhile; re-run the gate" in out, out[-3000:]
    assert "waiting for the promotion lock" in out
    client = _client(mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert server.ready() == all_on("2") and not (Path(cfg.repository_dir) / "embedder" / "3").exists()


def test_champion_removed_during_the_rollout_puts_serving_back(tmp_path, model_name, mlflow_uri,
                                                              v1_served_v2_gated, monkeypatch):
    """While v2 rolls out, an operator deletes the registered model: the swap's compare fails, and the server is
    back on v1 (what was served before: the registry names no champion any more)."""
    from embedforge.serving import rollout as serving
    from embedforge.stages import promote

    server, cfg, _, (reg2, dec2, onnx_b) = v1_served_v2_gated
    real_roll_out = serving.roll_out

    def roll_out_then_model_deleted(*args, **kw):
        result = real_roll_out(*args, **kw)
        assert server.ready() == all_on("2")  # v2 was really served at this point
        _client(mlflow_uri).delete_registered_model(model_name)
        return result

    monkeypatch.setattr(serving, "roll_out", roll_out_then_model_deleted)
    with pytest.raises(promote.PromotionConflict, match=f"{model_name}@champion was removed meanwhile"):
        promote.run(dec2, reg2, onnx_b, tmp_path / "artifact-b", cfg, mlflow_uri)
    assert server.ready() == all_on("1")


def test_the_live_repository_keeps_champion_previous_and_the_newest_versions(
        tmp_path, model_name, tiny_onnx_dir, mlflow_uri, v1_served_v2_gated):
    """After each promotion older versions are deleted: the champion, the previous one (rollback's target) and
    triton.keep_versions more stay; the version being served is never deleted."""
    from embedforge.stages import promote

    server, cfg, gated, (reg2, dec2, onnx_b) = v1_served_v2_gated
    live = Path(cfg.repository_dir)
    promote.run(dec2, reg2, onnx_b, tmp_path / "artifact-b", cfg.model_copy(update={"keep_versions": 0}), mlflow_uri)
    assert {p.name for p in (live / "embedder").iterdir() if p.is_dir()} == {"1", "2"}  # v2 champion, v1 previous
    reg3, dec3, d3 = gated("c", tiny_onnx_dir, finetuned=0.99)
    assert d3.promote and d3.champion_version == "2"
    promote.run(dec3, reg3, tiny_onnx_dir, tmp_path / "artifact-c", cfg.model_copy(update={"keep_versions": 0}),
                mlflow_uri)
    for name in ("embedder", "embedder_onnx", "embedder_tokenizer"):
        assert {p.name for p in (live / name).iterdir() if p.is_dir()} == {"2", "3"}, name
    assert server.ready() == all_on("3")

"""Promote against a real MLflow server: the alias is set (read back), the version tagged, the Triton repository
written with a config that parses into ModelConfig; a non-promote or mismatched decision is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest_plugins = ["conftest_mlflow"]

M = "ndcg@10"


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _register_and_gate(tmp_path, tag, uri, name, model_dir, onnx_dir, validation_dir, evaluation_dir_factory,
                       chunks_dir, pairs_dir, finetuned=0.90, base=0.80):
    """Run the real register and gate stages; return (registry_dir, decision_dir, decision)."""
    from embedforge import gate, registry
    from embedforge.config import EvaluateConfig, GateConfig, RegisterConfig

    ev = evaluation_dir_factory(tmp_path / f"evaluation-{tag}", {M: finetuned}, {M: base})
    reg = tmp_path / f"registry-{tag}"
    registry.run(model_dir, onnx_dir, ev, validation_dir, reg, RegisterConfig(model_name=name), uri, params={})
    dec = tmp_path / f"decision-{tag}"
    d = gate.run(ev, reg, chunks_dir, pairs_dir, dec, GateConfig(), EvaluateConfig(), uri)
    return reg, dec, d


def test_promote_sets_alias_tags_version_and_writes_triton_repo(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                                validation_dir, evaluation_dir_factory, chunks_dir,
                                                                pairs_dir, mlflow_uri):
    import onnxruntime as ort

    from embedforge import promote
    from embedforge.config import GateConfig, TritonConfig
    from embedforge.triton import validate_config

    reg, dec, d = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    assert d.promote is True
    repo = tmp_path / "triton"
    triton_cfg = TritonConfig(model_name="embedder", instance_kind="KIND_CPU", max_batch_size=16)
    manifest = promote.run(dec, reg, tiny_onnx_dir, repo, GateConfig(), triton_cfg, mlflow_uri)
    assert manifest.stage == "promote" and manifest.result.version == "1"

    client = _client(mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    tags = client.get_model_version(model_name, "1").tags
    assert tags["promoted_alias"] == "champion" and tags["promoted_metric"] == M
    assert float(tags["promoted_metric_value"]) == pytest.approx(0.90) and tags["promoted_over"] == "none"
    assert tags["promoted_at"].startswith("20")

    conf = validate_config((repo / "embedder" / "config.pbtxt").read_text())
    assert (conf.name, conf.platform, conf.max_batch_size) == ("embedder", "onnxruntime_onnx", 16)
    assert conf.parameters["registered_model"].string_value == model_name
    assert conf.parameters["registered_version"].string_value == "1"
    assert list(conf.output[0].dims) == [8]
    vdir = repo / "embedder" / "1"
    assert (vdir / "model.onnx").is_file() and (vdir / "tokenizer" / "tokenizer.json").is_file()
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
    promote.run(dec2, reg2, tiny_onnx_dir, repo, GateConfig(), triton_cfg, mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert client.get_model_version(model_name, "2").tags["promoted_over"] == "v1"
    assert json.loads((repo / "promotion.json").read_text())["previous_version"] == "1"
    assert sorted(p.name for p in (repo / "embedder").iterdir()) == ["1", "2", "config.pbtxt"]


def test_refuses_a_non_promote_decision(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                        evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri):
    from embedforge import promote
    from embedforge.config import GateConfig, TritonConfig
    from embedforge.errors import InputError

    reg, dec, d = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir,
                                     finetuned=0.50, base=0.80)
    assert d.promote is False
    with pytest.raises(InputError, match="says not to promote"):
        promote.run(dec, reg, tiny_onnx_dir, tmp_path / "triton", GateConfig(), TritonConfig(), mlflow_uri)
    assert _client(mlflow_uri).get_registered_model(model_name).aliases == {}
    assert not (tmp_path / "triton" / "embedforge_embedder").exists()


def test_refuses_a_decision_about_another_version(tmp_path, tiny_onnx_dir):
    from embedforge import promote
    from embedforge.config import GateConfig, TritonConfig
    from embedforge.contracts import RegistryRecord, StageTimer
    from embedforge.errors import InputError
    from embedforge.gate import decide

    d = decide({M: 0.9}, {M: 0.8}, None, GateConfig(), challenger_version="7")
    StageTimer("gate").write_manifest(tmp_path / "decision", result=d)
    StageTimer("register").write_manifest(tmp_path / "registry", result=RegistryRecord(
        tracking_uri="", experiment_id="1", experiment="e", run_id="r", model_name="m", version="3", source="s",
        artifact_uri="a", primary_metric="ndcg@10", primary_metric_value=0.9))
    with pytest.raises(InputError, match="about version 7 but registry.json registered version 3"):
        promote.run(tmp_path / "decision", tmp_path / "registry", tiny_onnx_dir, tmp_path / "triton", GateConfig(),
                    TritonConfig(), "http://127.0.0.1:9")  # refused before MLflow is contacted


def test_component_python_func(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir, evaluation_dir_factory,
                               chunks_dir, pairs_dir, mlflow_uri):
    from kfp import dsl

    from embedforge.components.promote.component import promote

    reg, dec, _ = _register_and_gate(tmp_path, "v1", mlflow_uri, model_name, tiny_model, tiny_onnx_dir,
                                     validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir)
    repo = dsl.Artifact(uri=str(tmp_path / "repo"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    promote.python_func(decision=dsl.Artifact(uri=str(dec)), registry=dsl.Artifact(uri=str(reg)),
                        onnx_model=dsl.Model(uri=str(tiny_onnx_dir)), config={}, triton_config={},
                        tracking_uri=mlflow_uri, triton_repo=repo, metrics=metrics)
    assert (tmp_path / "repo" / "embedforge_embedder" / "1" / "model.onnx").is_file()
    assert metrics.metadata["promoted_version"] == 1 and metrics.metadata[M] == pytest.approx(0.90)
    assert repo.metadata == {"model_name": "embedforge_embedder", "version": "1"}
    assert _client(mlflow_uri).get_model_version_by_alias(model_name, "champion").version == "1"

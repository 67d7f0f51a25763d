"""Register against a real MLflow server (one per session) and an embedded sqlite store: params, metrics and
artifacts visible through MlflowClient, secrets redacted, versions incrementing, registry.json, the component;
each version a real MLflow Model (pyfunc over the ONNX file) that loads from ``models:/`` and embeds text, tagged
with its provenance; params taken from the stage configs the component received."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["conftest_mlflow"]

FINETUNED = {"ndcg@10": 0.62, "recall@10": 0.81, "map@10": 0.55}
BASE = {"ndcg@10": 0.55, "recall@10": 0.74, "map@10": 0.49}
SECRET = "sk-live-0123456789abcdefABCDEF"


def _params(extra: dict | None = None) -> dict:
    from embedforge.config import PipelineConfig

    params = PipelineConfig().to_dict()
    params.update(extra or {})
    return params


@pytest.fixture
def evaluation_dir(tmp_path, evaluation_dir_factory) -> Path:
    return evaluation_dir_factory(tmp_path / "evaluation", FINETUNED, BASE,
                                  external={"base": {"ndcg@10": 0.3}, "finetuned": {"ndcg@10": 0.34}, "path": "/x"})


def _register(tmp_path, name, uri, saved_base_model, tiny_onnx_dir, evaluation_dir, validation_dir, params=None,
              out="registry"):
    from embedforge.config import RegisterConfig
    from embedforge.stages import register as registry

    cfg = RegisterConfig(model_name=name, experiment=f"exp-{name}")
    manifest = registry.run(saved_base_model, tiny_onnx_dir, evaluation_dir, validation_dir, tmp_path / out, cfg,
                            uri, params=params if params is not None else _params())
    return manifest, json.loads((tmp_path / out / "registry.json").read_text())


# ----------------------------------------------------------------------------------------- pure helpers
def test_flatten_params_dotted_truncated_and_secrets_redacted():
    from embedforge.registry.mlflow import MAX_PARAM_VALUE_LENGTH, flatten_params

    flat = flatten_params({
        "train": {"epochs": 1.0, "device": "auto"},
        "ingest": {"max_chunk_tokens": 256, "extensions": [".txt", ".md"]},
        "prompts": {"query": "query: "},
        "sdg": {"llm": {"api_key": SECRET, "apiKey": "x", "auth_token": "y", "password": "z", "model": "m"}},
        "hub_token": "hf_abcdefghijklmnopqrstuvwxyz",
        "note": SECRET,  # a credential-shaped value under an innocent key
        "big": "x" * 10_000,
        "credentials": {"user": "u", "pass": "p"},
        "sdg_url": "https://bob:hunter2@llm.example/v1",
    })
    assert flat["sdg_url"] == "https://bob:***@llm.example/v1"
    assert flat["train.epochs"] == "1.0" and flat["ingest.max_chunk_tokens"] == "256"
    assert flat["ingest.extensions"] == '[".txt", ".md"]'
    assert flat["prompts.query"] == "query: "
    assert flat["sdg.llm.model"] == "m"
    for key in ("sdg.llm.api_key", "sdg.llm.apiKey", "sdg.llm.auth_token", "sdg.llm.password", "hub_token", "note",
                "credentials"):
        assert flat[key] == "***", key
    assert not any("credentials." in k for k in flat)
    assert len(flat["big"]) == MAX_PARAM_VALUE_LENGTH
    assert all(SECRET not in v and "hf_abc" not in v for v in flat.values())


def test_metric_names_and_evaluation_metrics():
    from embedforge.registry.mlflow import evaluation_metrics, metric_key

    assert metric_key("ndcg@10") == "ndcg_at_10"
    assert metric_key("a b/c:d.e-f") == "a b/c:d.e-f"
    assert metric_key("weird#name!") == "weird_name_"
    m = evaluation_metrics({"primary_metric": "ndcg@10", "base": BASE, "finetuned": FINETUNED,
                            "counts": {"queries": 12}, "external": {"base": {"ndcg@10": 0.3},
                                                                    "finetuned": {"ndcg@10": 0.34}, "path": "/x"}})
    assert m["base_ndcg_at_10"] == 0.55 and m["finetuned_ndcg_at_10"] == 0.62
    assert m["delta_ndcg_at_10"] == pytest.approx(0.07)
    assert m["external_delta_ndcg_at_10"] == pytest.approx(0.04)
    assert m["count_queries"] == 12
    dims = evaluation_metrics({"base": BASE, "finetuned": FINETUNED, "by_dimension": {
        "128": {"base": {"ndcg@10": 0.5}, "finetuned": {"ndcg@10": 0.6}}, "64": {"finetuned": {"ndcg@10": 0.55}}}})
    assert (dims["base_ndcg_at_10_dim_128"], dims["finetuned_ndcg_at_10_dim_128"]) == (0.5, 0.6)
    assert dims["delta_ndcg_at_10_dim_128"] == pytest.approx(0.1) and dims["finetuned_ndcg_at_10_dim_64"] == 0.55
    assert "delta_ndcg_at_10_dim_64" not in dims and dims["finetuned_ndcg_at_10"] == 0.62


@pytest.mark.parametrize("text, expected", [
    ("https://bob:hunter2@mlflow.example:5000/x", "https://bob:***@mlflow.example:5000/x"),
    ("postgresql://u:p%40ss@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
    ("postgresql+psycopg2://mlflow:s3cr3t@db/mlflow?sslmode=require", "postgresql+psycopg2://mlflow:***@db/mlflow?sslmode=require"),
    ("http://minio:9000", "http://minio:9000"),
    ("https://ghp_abcdefghijklmnopqrstuvwx@github.com/o/r", "https://***@github.com/o/r"),
    ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("https://llm.example/v1?api_key=abc123&model=m", "https://llm.example/v1?api_key=***&model=m"),
    ("GET https://s3.local/b/k?X-Amz-Credential=AKIA1%2F&X-Amz-Signature=deadbeef&partNumber=2 failed: 403",
     "GET https://s3.local/b/k?X-Amz-Credential=***&X-Amz-Signature=***&partNumber=2 failed: 403"),
    ("cannot reach http://u:pw@a:1 nor https://v:pw2@b:2/", "cannot reach http://u:***@a:1 nor https://v:***@b:2/"),
    ("key sk-live-0123456789abcdefABCDEF leaked; risk-assessment-module fine",
     "key *** leaked; risk-assessment-module fine"),
])
def test_redact_hides_credentials_in_urls_and_text(text, expected):
    from embedforge.redact import redact

    assert redact(text) == expected


def test_resolve_tracking_uri(monkeypatch):
    from embedforge.errors import ConfigError
    from embedforge.registry.mlflow import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        resolve_tracking_uri("")
    assert resolve_tracking_uri("", recorded="sqlite:////r.db") == "sqlite:////r.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri("") == "http://env:5000"
    assert resolve_tracking_uri("http://explicit") == "http://explicit"


def test_no_tracking_uri_is_a_config_error(tmp_path, monkeypatch, saved_base_model, tiny_onnx_dir, evaluation_dir,
                                           validation_dir):
    from embedforge.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="no MLflow tracking URI"):
        _register(tmp_path, "x", "", saved_base_model, tiny_onnx_dir, evaluation_dir, validation_dir)


def test_missing_inputs_are_input_errors(tmp_path, saved_base_model, tiny_onnx_dir, evaluation_dir, validation_dir,
                                         mlflow_uri):
    from embedforge.errors import InputError

    with pytest.raises(InputError, match="onnx folder .* has no model.onnx"):
        _register(tmp_path, "x", mlflow_uri, saved_base_model, tmp_path, evaluation_dir, validation_dir)
    with pytest.raises(InputError, match="evaluation folder .* does not exist"):
        _register(tmp_path, "x", mlflow_uri, saved_base_model, tiny_onnx_dir, tmp_path / "nope", validation_dir)


# ------------------------------------------------------------------------------------- real MLflow server
def test_run_params_metrics_artifacts_and_versions(tmp_path, model_name, saved_base_model, tiny_onnx_dir,
                                                   evaluation_dir, validation_dir, mlflow_uri):
    from mlflow import MlflowClient

    params = _params({"sdg": {**_params()["sdg"], "api_key": SECRET}})
    manifest, reg = _register(tmp_path, model_name, mlflow_uri, saved_base_model, tiny_onnx_dir, evaluation_dir,
                              validation_dir, params=params)
    assert set(reg) >= {"tracking_uri", "experiment_id", "run_id", "model_name", "version", "source", "artifact_uri"}
    assert (reg["model_name"], reg["version"], reg["tracking_uri"]) == (model_name, "1", mlflow_uri)
    assert reg["source"] == reg["artifact_uri"] + "/model"
    assert manifest.stage == "register" and manifest.counts["version"] == 1

    client = MlflowClient(mlflow_uri)
    run = client.get_run(reg["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == reg["experiment_id"]
    p = run.data.params
    assert p["train.epochs"] == "3.0" and p["gate.metric"] == "ndcg@10" and p["register.model_name"]
    assert p["sdg.api_key"] == "***"
    assert not any(k.startswith("train_schedule.") for k in p)  # a model folder no train stage wrote
    assert SECRET not in json.dumps(p) and SECRET not in json.dumps(run.data.tags)
    m = run.data.metrics
    assert m["finetuned_ndcg_at_10"] == pytest.approx(0.62) and m["base_ndcg_at_10"] == pytest.approx(0.55)
    assert m["delta_ndcg_at_10"] == pytest.approx(0.07) and m["external_finetuned_ndcg_at_10"] == pytest.approx(0.34)

    top = {a.path for a in client.list_artifacts(reg["run_id"])}
    assert top == {"model", "evaluation.json", "validation.json"}
    in_model = {a.path for a in client.list_artifacts(reg["run_id"], "model")}
    assert {"model/MLmodel", "model/modules.json", "model/input_example.json"} <= in_model
    onnx_files = {a.path for a in client.list_artifacts(reg["run_id"], "model/artifacts/onnx")}
    assert {"model/artifacts/onnx/model.onnx", "model/artifacts/onnx/tokenizer.json"} <= onnx_files

    mv = client.get_model_version(model_name, "1")
    assert mv.source == reg["source"] and mv.run_id == reg["run_id"]
    assert mv.tags["primary_metric"] == "ndcg@10" and float(mv.tags["primary_metric_value"]) == pytest.approx(0.62)
    assert mv.tags["base_model"] == "all-MiniLM-L6-v2"
    assert mv.tags["code_version"].startswith("0.") and "data_sha256" not in mv.tags  # no pairs folder given

    # the registered source downloads as a loadable sentence-transformers folder
    from embedforge.registry.aliases import download_version

    dl = download_version(client, mlflow_uri, model_name, "1", tmp_path / "dl")
    assert (dl / "modules.json").is_file() and (dl / "config_sentence_transformers.json").is_file()

    _, reg2 = _register(tmp_path, model_name, mlflow_uri, saved_base_model, tiny_onnx_dir, evaluation_dir,
                        validation_dir, out="registry2")
    assert reg2["version"] == "2" and reg2["run_id"] != reg["run_id"]
    assert reg2["experiment_id"] == reg["experiment_id"]
    assert sorted(v.version for v in client.search_model_versions(f"name='{model_name}'")) == ["1", "2"]


def test_the_run_logs_what_train_trained_with_and_what_it_cost(tmp_path, model_name, auto_trained, tiny_onnx_dir,
                                                              evaluation_dir, validation_dir, mlflow_uri):
    """train.schedule=auto chooses learning rate, temperature, epochs and the augmentation rows per run, so the
    configured train.* params alone would misstate them: the MLflow run also carries what the train manifest says the
    model was trained with (train_schedule.*) and the stage's cost (train_* metrics, the search included)."""
    from mlflow import MlflowClient

    from embedforge import contracts

    trained = contracts.read_manifest(auto_trained)
    choice = trained.result.schedule
    _, reg = _register(tmp_path, model_name, mlflow_uri, auto_trained, tiny_onnx_dir, evaluation_dir,
                       validation_dir)
    run = MlflowClient(mlflow_uri).get_run(reg["run_id"])
    p, m = run.data.params, run.data.metrics
    assert (p["train_schedule.mode"], p["train_schedule.augment"]) == ("auto", "false")  # JSON spelling
    assert float(p["train_schedule.learning_rate"]) == choice.learning_rate
    assert float(p["train_schedule.epochs"]) == choice.epochs and p["train_schedule.reason"] == choice.reason
    assert m["train_probe_seconds"] == pytest.approx(choice.probe_seconds) and m["train_probe_seconds"] > 0
    assert m["train_probe_steps"] == choice.probe_steps > 0 and m["train_steps"] == trained.counts["steps"]
    assert m["train_seconds"] == pytest.approx(trained.result.train_seconds) and "train.learning_rate" in p


def test_embedded_sqlite_store_keeps_artifacts_beside_the_db(tmp_path, monkeypatch, tiny_model, tiny_onnx_dir,
                                                             evaluation_dir, validation_dir):
    from mlflow import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    _, reg = _register(tmp_path, "embedded", uri, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir)
    assert reg["version"] == "1"
    assert reg["artifact_uri"].startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert list(cwd.iterdir()) == []  # no ./mlruns, no ./mlflow.db
    client = MlflowClient(uri)
    assert client.get_run(reg["run_id"]).data.metrics["finetuned_ndcg_at_10"] == pytest.approx(0.62)
    model_path = Path(reg["source"].removeprefix("file://"))
    assert (model_path / "modules.json").is_file()
    # the store's copy of the weights is a hard link to the train output, not a second copy on disk
    assert (model_path / "model.safetensors").stat().st_size > 1 << 20
    assert (model_path / "model.safetensors").samefile(tiny_model / "model.safetensors")


def _onnx_reference(onnx_dir: Path, texts: list[str]):
    """Embeddings straight from onnxruntime + the shipped tokenizer: what Triton computes for these texts."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(onnx_dir))(texts, padding=True, truncation=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    return sess.run(None, feeds)[0]


def test_component_logs_effective_configs_provenance_and_a_loadable_mlflow_model(
        tmp_path, monkeypatch, model_name, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir, mlflow_uri,
        pairs_dir):
    import mlflow
    import numpy as np
    import pandas as pd
    from embedforge.components.register.component import register
    from kfp import dsl
    from mlflow import MlflowClient

    from embedforge.contracts import read_manifest, sha256_file

    defaults = _params()
    stage_args = {f"{k}_config": defaults[k] for k in ("ingest", "sdg", "validate", "mine", "train", "evaluate",
                                                       "export", "gate", "triton")}
    # configs overridden at submit time: what the stages received is what MLflow must show
    stage_args["train_config"] = {"epochs": 7.5, "batch_size": 48}
    stage_args["sdg_config"] = {**defaults["sdg"], "llm": {**defaults["sdg"]["llm"],
                                                          "base_url": "https://bob:hunter2@llm.example/v1"}}
    out = dsl.Artifact(uri=str(tmp_path / "registry_out"))
    register.python_func(
        model=dsl.Model(uri=str(tiny_model)), onnx_model=dsl.Model(uri=str(tiny_onnx_dir)),
        evaluation=dsl.Artifact(uri=str(evaluation_dir)), validation=dsl.Artifact(uri=str(validation_dir)),
        pairs=dsl.Dataset(uri=str(pairs_dir)), config={"model_name": model_name, "experiment": "component-test"},
        base_model="/models/my-base", prompts={"query": "query: ", "document": ""}, tracking_uri=mlflow_uri,
        kfp_run_id="run-3f2a", registry=out, **stage_args,
    )
    reg = json.loads((tmp_path / "registry_out" / "registry.json").read_text())
    assert reg["model_name"] == model_name and reg["version"] == "1"
    assert out.metadata["version"] == "1" and out.metadata["run_id"] == reg["run_id"]
    assert (tmp_path / "registry_out" / "manifest.json").is_file()
    client = MlflowClient(mlflow_uri)
    run = client.get_run(reg["run_id"])
    # the SDG counts (pairs per split; LLM requests/tokens per stage when the LLM generator ran) reach MLflow
    assert run.data.metrics["sdg_train_pairs"] == read_manifest(pairs_dir).counts["train_pairs"] > 0
    p = run.data.params
    assert p["train.epochs"] == "7.5" and p["train.batch_size"] == "48"
    assert p["train.learning_rate"] == str(defaults["train"]["learning_rate"])  # defaults filled in
    assert p["base_model"] == "/models/my-base" and p["prompts.query"] == "query: "
    assert p["sdg.llm.base_url"] == "https://bob:***@llm.example/v1"
    assert "hunter2" not in json.dumps(p)

    expected_tags = {"kfp_run_id": "run-3f2a", "base_model": "/models/my-base",
                     "data_sha256": sha256_file(pairs_dir / "pairs.jsonl")}
    mv = client.get_model_version(model_name, "1")
    assert expected_tags.items() <= mv.tags.items() and mv.tags["code_version"]
    assert all(run.data.tags[f"embedforge.{k}"] == v for k, v in expected_tags.items())

    # a real MLflow Model: loads by registry URI with pyfunc and embeds like the ONNX file Triton serves
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    info = mlflow.models.get_model_info(f"models:/{model_name}/1")
    assert info.signature.inputs.input_names() == ["text"] and info.signature.params.params[0].name == "prompt_name"
    assert info.metadata["kfp_run_id"] == "run-3f2a"
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
    texts = ["rotate the signing keys", "a longer passage about key rotation schedules"]
    emb = pyfunc.predict(pd.DataFrame({"text": texts}))
    assert emb.shape == (2, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, _onnx_reference(tiny_onnx_dir, texts), atol=1e-5)
    as_query = pyfunc.predict(pd.DataFrame({"text": texts}), params={"prompt_name": "query"})
    np.testing.assert_allclose(as_query, _onnx_reference(tiny_onnx_dir, ["query: " + t for t in texts]), atol=1e-5)
    assert not np.allclose(as_query, emb)
    # ... and the same folder is still the sentence-transformers model the gate re-evaluates
    from sentence_transformers import SentenceTransformer

    from embedforge.registry.aliases import download_version

    st = SentenceTransformer(str(download_version(client, mlflow_uri, model_name, "1", tmp_path / "dl")), device="cpu")
    assert st.encode(texts).shape == (2, 32)


# ------------------------------------------------------------------------------- killed in the middle (kill -9)
_PAUSED_REGISTER = """
import sys, time
from mlflow import MlflowClient
import embedforge.stages.register as registry
from embedforge.config import PipelineConfig, RegisterConfig

# The test pauses this real register at one point so that a real SIGKILL lands exactly there.
if sys.argv[1] == "after-version":
    create = MlflowClient.create_model_version
    def create_then_pause(self, *args, **kwargs):
        create(self, *args, **kwargs)
        print("PAUSED", flush=True)
        time.sleep(600)
    MlflowClient.create_model_version = create_then_pause
else:  # "after-record": the record is written, the commit never comes
    def pause(client, run_id):
        print("PAUSED", flush=True)
        time.sleep(600)
    registry.commit = pause
model, onnx, evaluation, validation, out, name, uri = sys.argv[2:]
registry.run(model, onnx, evaluation, validation, out, RegisterConfig(model_name=name, experiment="exp-" + name), uri,
             params=PipelineConfig().to_dict())
"""


def _kill_register_at(point, tmp_path, uri, name, model, onnx_dir, evaluation_dir, validation_dir) -> str:
    """A real register in a child process, SIGKILLed at ``point`` once its version is in the store; its run id."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from embedforge.registry.mlflow import RUN_ID_FILE, client_for

    script = tmp_path / "paused_register.py"
    script.write_text(_PAUSED_REGISTER)
    proc = subprocess.Popen([sys.executable, str(script), point, str(model), str(onnx_dir), str(evaluation_dir),
                             str(validation_dir), str(tmp_path / "registry"), name, uri],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "PAUSED", proc.wait()
    deadline = time.time() + 60
    while not client_for(uri).search_model_versions(f"name='{name}'"):  # the version is in the store ...
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # ... and the process dies without a chance to clean up
    proc.wait()
    return (tmp_path / "registry" / RUN_ID_FILE).read_text().strip()


@pytest.fixture
def killed_register(tmp_path, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir):
    """``killed_register(point, name)`` -> (client, run id): a sqlite store with a register SIGKILLed at ``point``."""
    from embedforge.registry.mlflow import client_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def kill(point: str, name: str):
        run_id = _kill_register_at(point, tmp_path, uri, name, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir)
        return client_for(uri), run_id

    return kill


def test_sigkill_after_the_version_exists_leaves_no_version_without_its_record(
        tmp_path, killed_register, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir):
    from embedforge.registry.recovery import RECORD_TAG

    client, run_id = killed_register("after-version", "killed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not (tmp_path / "registry" / "registry.json").exists()  # the half registration a kill -9 leaves
    assert [str(v.version) for v in client.search_model_versions("name='killed'")] == ["1"]
    assert client.get_run(run_id).info.status == "RUNNING"

    # the next register against the same store cleans up first, then registers its own version with its record
    _, reg = _register(tmp_path, "killed", uri, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir, out="again")
    assert [str(v.version) for v in client.search_model_versions("name='killed'")] == [reg["version"]] == ["2"]
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and killed.data.tags[RECORD_TAG] == "discarded"
    finished = client.get_run(reg["run_id"])
    assert finished.info.status == "FINISHED" and finished.data.tags[RECORD_TAG] == "written"


def test_sigkill_after_the_record_commits_what_the_record_names(tmp_path, killed_register):
    from embedforge.registry.recovery import RECORD_TAG, recover

    client, run_id = killed_register("after-record", "recorded")
    assert json.loads((tmp_path / "registry" / "registry.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    actions = recover(client, recorded_run_ids=[run_id])  # the runner passes the run ids of records under --out
    assert actions == [f"MLflow run {run_id}: its record exists; committed it (FINISHED)"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[RECORD_TAG] == "written"
    assert [str(v.version) for v in client.search_model_versions("name='recorded'")] == ["1"]
    assert recover(client) == []  # nothing pending is left

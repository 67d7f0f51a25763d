"""Register against a real MLflow server (one per session) and an embedded sqlite store: params, metrics and
artifacts visible through MlflowClient, secrets redacted, versions incrementing, registry.json, the component."""

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
    from embedforge import registry
    from embedforge.config import RegisterConfig

    cfg = RegisterConfig(model_name=name, experiment=f"exp-{name}")
    manifest = registry.run(saved_base_model, tiny_onnx_dir, evaluation_dir, validation_dir, tmp_path / out, cfg,
                            uri, params=params if params is not None else _params())
    return manifest, json.loads((tmp_path / out / "registry.json").read_text())


# ----------------------------------------------------------------------------------------- pure helpers
def test_flatten_params_dotted_truncated_and_secrets_redacted():
    from embedforge.registry import MAX_PARAM_VALUE_LENGTH, flatten_params

    flat = flatten_params({
        "train": {"epochs": 1.0, "device": "auto"},
        "ingest": {"max_chunk_tokens": 256, "extensions": [".txt", ".md"]},
        "prompts": {"query": "query: "},
        "sdg": {"llm": {"api_key": SECRET, "apiKey": "x", "auth_token": "y", "password": "z", "model": "m"}},
        "hub_token": "hf_abcdefghijklmnopqrstuvwxyz",
        "note": SECRET,  # a credential-shaped value under an innocent key
        "big": "x" * 10_000,
        "credentials": {"user": "u", "pass": "p"},
    })
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
    from embedforge.registry import evaluation_metrics, metric_key

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


def test_redact_and_resolve_tracking_uri(monkeypatch):
    from embedforge.errors import ConfigError
    from embedforge.registry import redact_uri, resolve_tracking_uri

    assert redact_uri("https://bob:hunter2@mlflow.example:5000/x") == "https://bob:***@mlflow.example:5000/x"
    assert redact_uri("postgresql://u:pw@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
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
    assert SECRET not in json.dumps(p) and SECRET not in json.dumps(run.data.tags)
    m = run.data.metrics
    assert m["finetuned_ndcg_at_10"] == pytest.approx(0.62) and m["base_ndcg_at_10"] == pytest.approx(0.55)
    assert m["delta_ndcg_at_10"] == pytest.approx(0.07) and m["external_finetuned_ndcg_at_10"] == pytest.approx(0.34)

    top = {a.path for a in client.list_artifacts(reg["run_id"])}
    assert top == {"model", "onnx", "evaluation.json", "validation.json"}
    assert "model/modules.json" in {a.path for a in client.list_artifacts(reg["run_id"], "model")}
    assert "onnx/model.onnx" in {a.path for a in client.list_artifacts(reg["run_id"], "onnx")}

    mv = client.get_model_version(model_name, "1")
    assert mv.source == reg["source"] and mv.run_id == reg["run_id"]
    assert mv.tags["primary_metric"] == "ndcg@10" and float(mv.tags["primary_metric_value"]) == pytest.approx(0.62)
    assert mv.tags["base_model"] == "all-MiniLM-L6-v2"

    # the registered source downloads as a loadable sentence-transformers folder
    from embedforge.gate import download_version

    dl = download_version(client, mlflow_uri, model_name, "1", tmp_path / "dl")
    assert (dl / "modules.json").is_file() and (dl / "config_sentence_transformers.json").is_file()

    _, reg2 = _register(tmp_path, model_name, mlflow_uri, saved_base_model, tiny_onnx_dir, evaluation_dir,
                        validation_dir, out="registry2")
    assert reg2["version"] == "2" and reg2["run_id"] != reg["run_id"]
    assert reg2["experiment_id"] == reg["experiment_id"]
    assert sorted(v.version for v in client.search_model_versions(f"name='{model_name}'")) == ["1", "2"]


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


def test_component_python_func(tmp_path, model_name, tiny_model, tiny_onnx_dir, evaluation_dir, validation_dir,
                               mlflow_uri, pairs_dir):
    from kfp import dsl
    from mlflow import MlflowClient

    from embedforge.contracts import read_manifest

    from embedforge.components.register.component import register

    out = dsl.Artifact(uri=str(tmp_path / "registry_out"))
    register.python_func(
        model=dsl.Model(uri=str(tiny_model)), onnx_model=dsl.Model(uri=str(tiny_onnx_dir)),
        evaluation=dsl.Artifact(uri=str(evaluation_dir)), validation=dsl.Artifact(uri=str(validation_dir)),
        pairs=dsl.Dataset(uri=str(pairs_dir)),
        config={"model_name": model_name, "experiment": "component-test"}, params=_params(),
        tracking_uri=mlflow_uri, registry=out,
    )
    reg = json.loads((tmp_path / "registry_out" / "registry.json").read_text())
    assert reg["model_name"] == model_name and reg["version"] == "1"
    assert out.metadata["version"] == "1" and out.metadata["run_id"] == reg["run_id"]
    assert (tmp_path / "registry_out" / "manifest.json").is_file()
    # the SDG counts (pairs per split; LLM requests/tokens per stage when the LLM generator ran) reach MLflow
    metrics = MlflowClient(mlflow_uri).get_run(reg["run_id"]).data.metrics
    assert metrics["sdg_train_pairs"] == read_manifest(pairs_dir).counts["train_pairs"] > 0

"""register -> gate -> promote through a production-shaped MLflow: ``mlflow server --app-name basic-auth`` on a real
PostgreSQL cluster, artifacts proxied to an S3 bucket (moto's server on localhost), the pipeline authenticating as
a non-admin user with MLFLOW_TRACKING_USERNAME/PASSWORD and holding no S3 credentials at all.

What it proves: runs, params, versions and aliases land in PostgreSQL (read back with psycopg2, not only through
MLflow); the version's files (MLmodel, ONNX, tokenizer, sentence-transformers weights) land in the bucket; the
gate downloads and re-evaluates the champion through the proxy; the version loads with ``mlflow.pyfunc``;
anonymous and wrong-password requests are refused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

pytest_plugins = ["conftest_mlflow"]

M = "ndcg@10"


@pytest.fixture
def as_pipeline(monkeypatch, production_mlflow):
    """The client side of a pipeline pod: MLflow credentials from the env (a K8s Secret there), no S3 keys."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_S3_ENDPOINT_URL",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", production_mlflow.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", production_mlflow.password)
    return production_mlflow


def _pg_rows(pg, sql: str, *args) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(pg.uri) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_anonymous_and_wrong_password_are_refused(production_mlflow, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    url = f"{production_mlflow.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 401
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", production_mlflow.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(MlflowException, match="401|[Uu]nauthori"):
        MlflowClient(production_mlflow.uri).search_experiments()


def test_register_gate_promote_on_postgres_and_s3(tmp_path, monkeypatch, as_pipeline, model_name, tiny_model, tiny_onnx_dir,
                                                  validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from embedforge.config import (
        EvaluateConfig,
        GateConfig,
        PipelineConfig,
        RegisterConfig,
        TritonConfig,
    )
    from embedforge.stages import gate, promote
    from embedforge.stages import register as registry

    prod, uri = as_pipeline, as_pipeline.uri
    params = PipelineConfig().to_dict()

    def register_and_gate(tag: str, finetuned: float, base: float):
        ev = evaluation_dir_factory(tmp_path / f"evaluation-{tag}", {M: finetuned}, {M: base})
        reg = tmp_path / f"registry-{tag}"
        registry.run(tiny_model, tiny_onnx_dir, ev, validation_dir, reg, RegisterConfig(model_name=model_name), uri,
                     params=params, pairs_dir=pairs_dir, kfp_run_id=f"kfp-{tag}")
        dec = tmp_path / f"decision-{tag}"
        return reg, dec, gate.run(ev, reg, chunks_dir, pairs_dir, dec, GateConfig(), EvaluateConfig(), uri).result

    reg1, dec1, d1 = register_and_gate("v1", 0.90, 0.80)
    assert d1.promote is True and d1.champion_version is None
    repo = tmp_path / "triton"
    triton_cfg = TritonConfig(model_name="embedder", instance_kind="KIND_CPU", max_batch_size=8)
    promote.run(dec1, reg1, tiny_onnx_dir, repo, triton_cfg, uri)
    rec1 = json.loads((reg1 / "registry.json").read_text())
    assert rec1["tracking_uri"] == uri and rec1["source"].startswith("mlflow-artifacts:/")

    # the second run: the gate downloads v1 through the proxy (from S3) and re-evaluates it; v2 wins
    reg2, dec2, d2 = register_and_gate("v2", 0.95, 0.80)
    assert d2.champion_version == "1" and d2.champion_value < 0.9 and d2.promote is True
    promote.run(dec2, reg2, tiny_onnx_dir, repo, triton_cfg, uri)
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"

    # PostgreSQL holds the registry: versions, their provenance tags, the alias, the run's params
    pg = prod.postgres
    assert _pg_rows(pg, "SELECT version FROM model_versions WHERE name = %s ORDER BY version", model_name) == [(1,), (2,)]
    assert _pg_rows(pg, "SELECT value FROM model_version_tags WHERE name = %s AND version = 2 AND key = 'kfp_run_id'",
                    model_name) == [("kfp-v2",)]
    assert _pg_rows(pg, "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'",
                    model_name) == [(2,)]
    run_id = rec1["run_id"]
    assert _pg_rows(pg, "SELECT value FROM params WHERE run_uuid = %s AND key = 'train.epochs'", run_id) == [("3.0",)]

    # S3 holds the artifacts: the MLflow Model of each version, ONNX and tokenizer inside it
    keys = prod.s3.keys(prod.artifacts_prefix)
    for rec in (rec1, json.loads((reg2 / "registry.json").read_text())):
        run_keys = {k.split(f"/{rec['run_id']}/artifacts/", 1)[1] for k in keys if f"/{rec['run_id']}/artifacts/" in k}
        assert {"model/MLmodel", "model/modules.json", "model/artifacts/onnx/model.onnx",
                "model/artifacts/onnx/tokenizer.json", "evaluation.json", "validation.json"} <= run_keys

    # the champion is a loadable MLflow Model served through the proxy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    emb = mlflow.pyfunc.load_model(f"models:/{model_name}@champion").predict(pd.DataFrame({"text": ["a", "b c"]}))
    assert emb.shape == (2, 8)


def test_mlflow_image_pins_what_these_tests_ran():
    """images/Dockerfile.mlflow installs the MLflow, psycopg2, boto3 and Flask-WTF versions (and their own
    dependencies') this test run used (so the server image is the combination proven above), runs non-root and has
    a HEALTHCHECK on /health."""
    import re
    from importlib.metadata import version
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "images" / "Dockerfile.mlflow").read_text()
    pinned = dict(re.findall(r"\b([A-Za-z][A-Za-z0-9_.\-]*)==([0-9][^\s\"$]*)", text.split("printf", 1)[1].split("&&", 1)[0]))
    pinned["mlflow"] = re.search(r"ARG MLFLOW_VERSION=(\S+)", text).group(1)
    assert {"mlflow", "psycopg2-binary", "boto3", "Flask-WTF", "botocore", "s3transfer", "WTForms"} <= set(pinned), pinned
    assert {pkg: version(pkg) for pkg in pinned} == pinned
    assert re.search(r"^USER 1000", text, re.M) and re.search(r"^HEALTHCHECK .*\n.*/health", text, re.M)

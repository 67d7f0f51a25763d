"""Rollback against a real MLflow server and a real tritonserver: ``champion`` moves back (``previous`` keeps the
version rolled back from), the server then serves exactly that version (checked by the promotion probe and by
a text request), a second rollback goes forward again, and targets that cannot be served are refused while
the champion stays served."""

from __future__ import annotations

import json

import numpy as np
import pytest
from triton_server import all_on

pytest_plugins = ["conftest_mlflow", "conftest_triton"]


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture
def promoted_twice(tmp_path, model_name, tiny_model, tiny_onnx_dir, export_dir, validation_dir,
                   evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri, triton, triton_cfg):
    """v1 (seed 0) then v2 (seed 1) promoted over the wire by the real stages; returns (server, cfg, live)."""
    from embedforge.config import EvaluateConfig, GateConfig, RegisterConfig
    from embedforge.stages import gate, promote
    from embedforge.stages import register as registry

    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server)
    for tag, onnx_dir, value in (("1", tiny_onnx_dir, 0.90), ("2", export_dir(tmp_path / "export-2", seed=1), 0.95)):
        ev = evaluation_dir_factory(tmp_path / f"evaluation-{tag}", {"ndcg@10": value}, {"ndcg@10": 0.80})
        reg, dec = tmp_path / f"registry-{tag}", tmp_path / f"decision-{tag}"
        registry.run(tiny_model, onnx_dir, ev, validation_dir, reg, RegisterConfig(model_name=model_name),
                     mlflow_uri, params={})
        gate.run(ev, reg, chunks_dir, pairs_dir, dec, GateConfig(), EvaluateConfig(), mlflow_uri)
        promote.run(dec, reg, onnx_dir, tmp_path / f"artifact-{tag}", cfg, mlflow_uri)
    assert server.ready() == all_on("2")
    return server, cfg, live


def test_rollback_moves_the_alias_and_serves_that_version(promoted_twice, model_name, mlflow_uri):
    from embedforge.serving import rollback
    from embedforge.serving.client import embed
    from embedforge.serving.rollout import reference_embedding

    server, cfg, live = promoted_twice
    client = _client(mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "previous").version == "1"

    result = rollback.run(model_name, cfg, mlflow_uri)
    assert (result.version, result.rolled_back_from) == ("1", "2")
    assert result.rollout["probe_cosine"] > 0.999 and result.rollout["replicas"][0]["url"] == server.url
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert client.get_model_version_by_alias(model_name, "previous").version == "2"
    assert client.get_model_version(model_name, "2").tags["rolled_back_to"] == "v1"
    assert server.ready() == all_on("1")
    texts = ["how do I leave a loop"]
    np.testing.assert_allclose(embed(server.url, texts, model="embedder"),
                               reference_embedding(live, "embedder", "1", texts), atol=1e-5)

    # a second rollback goes forward again
    assert rollback.run(model_name, cfg, mlflow_uri).version == "2"
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert server.ready() == all_on("2")


def test_rollback_command_with_an_explicit_version(promoted_twice, model_name, mlflow_uri):
    from typer.testing import CliRunner

    from embedforge.cli import app

    server, cfg, live = promoted_twice
    out = CliRunner().invoke(app, [
        "rollback", "--model", model_name, "--to", "1", "--tracking-uri", mlflow_uri,
        "--set", f"triton.model_name={cfg.model_name}", "--set", "triton.embedder_backend=python",
        "--set", f"triton.repository_dir={live}", "--set", f"triton.server_url={server.url}"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout[out.stdout.index("{"):])["version"] == "1"
    assert _client(mlflow_uri).get_model_version_by_alias(model_name, "champion").version == "1"
    assert server.ready() == all_on("1")


def test_a_target_that_cannot_be_served_changes_nothing(promoted_twice, model_name, mlflow_uri):
    import shutil

    from embedforge.errors import InputError, ServingError
    from embedforge.serving import rollback

    server, cfg, live = promoted_twice
    with pytest.raises(InputError, match="has no version 9: pass --to with a registered version"):
        rollback.run(model_name, cfg, mlflow_uri, to_version="9")
    shutil.rmtree(live / "embedder_onnx" / "1")  # the old version's embedder is gone from the volume
    with pytest.raises(InputError, match="version 1 of 'embedder' is not in the model repository"):
        rollback.run(model_name, cfg, mlflow_uri)
    shutil.copytree(live / "embedder_onnx" / "2", live / "embedder_onnx" / "1")
    (live / "embedder_onnx" / "1" / "served-config.pbtxt").write_text(
        (live / "embedder_onnx" / "2" / "served-config.pbtxt").read_text().replace("versions: 2", "versions: 1"))
    (live / "embedder_onnx" / "1" / "model.onnx").write_bytes(b"\x08\x07broken")
    with pytest.raises(ServingError, match="could not load 'embedder_onnx'"):
        rollback.run(model_name, cfg, mlflow_uri)
    assert _client(mlflow_uri).get_model_version_by_alias(model_name, "champion").version == "2"
    assert server.ready() == all_on("2")

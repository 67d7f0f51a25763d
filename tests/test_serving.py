"""Rollout to a running inference server over Triton's HTTP protocol (tritonclient.http against a real HTTP server
that serves the repository with onnxruntime, tests/triton_standin.py): explicit load, poll mode, a server serving
another model, an unreachable server — and promote's publish/rollback around it, with a real MLflow server."""

from __future__ import annotations

import json
import shutil

import pytest

from triton_standin import serve

pytest_plugins = ["conftest_mlflow"]


@pytest.fixture
def published(tmp_path, tiny_onnx_dir):
    """A live repository holding version 3 of model ``embedder`` (the real repository writer)."""
    from embedforge.config import TritonConfig
    from embedforge.triton import write_model_repository

    live = tmp_path / "models"
    write_model_repository(tiny_onnx_dir, live, TritonConfig(model_name="embedder"), "3")
    return live


def test_explicit_load_then_the_served_embedding_matches_the_export(published):
    from embedforge.serving import roll_out

    with serve(published) as (url, server):
        r = roll_out(url, published, "embedder", "3", timeout_s=20)
    assert server.loads == ["embedder:3"]
    assert (r.mode, r.version, r.dim) == ("explicit", "3", 8)
    assert r.probe_cosine > 0.9999


def test_poll_mode_server_picks_the_version_up_itself(published):
    from embedforge.serving import roll_out

    with serve(published, mode="poll") as (url, server):
        r = roll_out(url, published, "embedder", "3", timeout_s=20)
    assert r.mode == "poll" and server.loads  # loaded by the scan, not by an explicit request


def test_a_server_serving_another_model_under_that_name_is_caught(tmp_path, published, export_dir):
    """The server reads another repository whose version 3 is a different model: ready, but not ours."""
    from embedforge.config import TritonConfig
    from embedforge.errors import ServingError
    from embedforge.serving import roll_out
    from embedforge.triton import write_model_repository

    other = tmp_path / "other-repo"
    write_model_repository(export_dir(tmp_path / "other-export", seed=1), other, TritonConfig(model_name="embedder"), "3")
    with serve(other) as (url, _), pytest.raises(ServingError, match="differs from the exported model"):
        roll_out(url, published, "embedder", "3", timeout_s=20)


def test_unreachable_server_and_bad_url_are_clear_errors(published):
    import socket

    from embedforge.errors import ServingError
    from embedforge.serving import roll_out

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ServingError, match=f"127.0.0.1:{port}.*(cannot reach|not live)"):
        roll_out(f"http://127.0.0.1:{port}", published, "embedder", "3", timeout_s=5)
    with pytest.raises(ServingError, match="not an http"):
        roll_out("ftp://triton:8000", published, "embedder", "3", timeout_s=5)


def test_server_url_needs_a_repository_dir():
    from pydantic import ValidationError

    from embedforge.config import TritonConfig

    with pytest.raises(ValidationError, match="needs triton.repository_dir"):
        TritonConfig(server_url="http://triton:8000")


# ------------------------------------------------------------------------------------------------ promote
def _gated(tmp_path, uri, name, tiny_model, onnx_dir, validation_dir, evaluation_dir_factory, chunks_dir, pairs_dir):
    from embedforge import gate, registry
    from embedforge.config import EvaluateConfig, GateConfig, RegisterConfig

    ev = evaluation_dir_factory(tmp_path / "evaluation", {"ndcg@10": 0.9}, {"ndcg@10": 0.8})
    registry.run(tiny_model, onnx_dir, ev, validation_dir, tmp_path / "registry", RegisterConfig(model_name=name), uri,
                 params={})
    gate.run(ev, tmp_path / "registry", chunks_dir, pairs_dir, tmp_path / "decision", GateConfig(), EvaluateConfig(), uri)
    return tmp_path / "registry", tmp_path / "decision"


def test_promote_rolls_out_before_it_moves_the_alias(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                                     evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri):
    from mlflow import MlflowClient

    from embedforge import promote
    from embedforge.config import GateConfig, TritonConfig

    reg, dec = _gated(tmp_path, mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                      evaluation_dir_factory, chunks_dir, pairs_dir)
    live = tmp_path / "models"
    with serve(live) as (url, server):
        cfg = TritonConfig(model_name="embedder", repository_dir=str(live), server_url=url, ready_timeout_s=20)
        promote.run(dec, reg, tiny_onnx_dir, tmp_path / "artifact", GateConfig(), cfg, mlflow_uri)
    assert server.loads == ["embedder:1"]
    assert (live / "embedder" / "1" / "model.onnx").is_file() and (tmp_path / "artifact" / "embedder" / "1").is_dir()
    rec = json.loads((tmp_path / "artifact" / "promotion.json").read_text())
    assert rec["published_to"] == str(live) and rec["rollout"]["mode"] == "explicit"
    assert rec["rollout"]["probe_cosine"] > 0.9999
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert client.get_model_version(model_name, "1").tags["served_by"] == f"{url} (embedder v1)"


def test_failed_rollout_takes_the_version_back_and_keeps_the_alias(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                                   validation_dir, evaluation_dir_factory, chunks_dir,
                                                                   pairs_dir, mlflow_uri):
    """The server reads another folder than the one promote publishes into (a wrong PVC, say): the load fails,
    the live repository is left as it was (the previous version and its config), and no alias moves."""
    from mlflow import MlflowClient

    from embedforge import promote
    from embedforge.config import GateConfig, TritonConfig
    from embedforge.errors import ServingError
    from embedforge.triton import write_model_repository

    reg, dec = _gated(tmp_path, mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                      evaluation_dir_factory, chunks_dir, pairs_dir)
    live = tmp_path / "models"
    write_model_repository(tiny_onnx_dir, live, TritonConfig(model_name="embedder"), "7")  # what is served today
    before = (live / "embedder" / "config.pbtxt").read_text()
    elsewhere = tmp_path / "server-reads-this"
    elsewhere.mkdir()
    with serve(elsewhere) as (url, _):
        cfg = TritonConfig(model_name="embedder", repository_dir=str(live), server_url=url, ready_timeout_s=5)
        with pytest.raises(ServingError, match="could not load the model"):
            promote.run(dec, reg, tiny_onnx_dir, tmp_path / "artifact", GateConfig(), cfg, mlflow_uri)
    assert sorted(p.name for p in (live / "embedder").iterdir()) == ["7", "config.pbtxt"]
    assert (live / "embedder" / "config.pbtxt").read_text() == before
    assert MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_registered_model(model_name).aliases == {}
    shutil.rmtree(live)

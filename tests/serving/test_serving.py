"""Serving against a real ``tritonserver`` (explicit model control; tests/support/triton_server.py): text in through the
ensemble equals SentenceTransformer.encode, exactly one version is served, a broken version never replaces the
serving one, two replicas sharing one repository, and a replica that dies mid-rollout."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from triton_server import all_on

pytest_plugins = ["conftest_mlflow", "conftest_triton"]

LONG = " ".join(["the yield statement suspends a generator and hands a value back to its caller"] * 40)
TEXTS = ["what does the yield statement do", "break out of a loop early", LONG]


def _cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_model, chunks_dir):
    """The real export stage's output for the tiny model (max_seq_length 128, prompts query:/passage:, + FP16)."""
    from embedforge.config import ExportConfig
    from embedforge.stages import export

    out = tmp_path_factory.mktemp("served") / "onnx"
    export.run(tiny_model, chunks_dir, out, ExportConfig(parity_samples=4, fp16=True))
    return out


def test_text_in_equals_sentence_transformers_and_tokens_in_stays(tmp_path, tiny_model, tiny_export, triton,
                                                                  triton_cfg):
    from sentence_transformers import SentenceTransformer
    from typer.testing import CliRunner

    from embedforge.cli import app
    from embedforge.serving import rollout as serving
    from embedforge.serving.client import embed, http_client
    from embedforge.serving.repository import write_model_repository

    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server)
    write_model_repository(tiny_export, live, cfg, 1, serve=False)
    rollout = serving.serve(cfg, "1")
    assert [r.url for r in rollout.replicas] == [server.url] and rollout.probe_cosine > 0.999
    assert rollout.replicas[0].mode == "explicit" and rollout.dim == 32

    st = SentenceTransformer(str(tiny_model), device="cpu")
    for input_type, prompt_name in (("query", "query"), ("passage", "document")):
        served = embed(server.url, TEXTS, input_type=input_type, model="embedder")
        ref = st.encode(TEXTS, prompt_name=prompt_name, normalize_embeddings=True)
        assert served.shape == ref.shape == (3, 32)
        assert _cos(served, ref).min() >= 0.999  # incl. the long text: truncated at max_seq_length like training
        assert np.linalg.norm(served, axis=1) == pytest.approx(1.0, abs=1e-5)
    # the prompt matters: a query embedding is not the passage embedding of the same text
    assert _cos(embed(server.url, TEXTS[:1], "query", model="embedder"),
                embed(server.url, TEXTS[:1], "passage", model="embedder"))[0] < 0.9999

    out = CliRunner().invoke(app, ["embed", "--url", server.url, "--model", "embedder", "--input-type", "passage",
                                   TEXTS[0]])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["dim"] == 32 and _cos(got["embeddings"][0], st.encode(TEXTS[0], prompt_name="document")) >= 0.999

    # tokens in: clients that tokenise themselves call the embedder model directly
    from tritonclient.http import InferInput

    enc = st.tokenizer(["query: " + TEXTS[0]], return_tensors="np")
    inputs = []
    for name in ("input_ids", "attention_mask"):
        inputs.append(InferInput(name, list(enc[name].shape), "INT64"))
        inputs[-1].set_data_from_numpy(enc[name].astype(np.int64))
    client = http_client(server.url)
    tokens_in = client.infer("embedder_onnx", inputs).as_numpy("embeddings")
    client.close()
    assert _cos(tokens_in, st.encode(TEXTS[:1], prompt_name="query"))[0] >= 0.999


def test_fp16_variant_served_as_text_in(tmp_path, tiny_model, tiny_export, triton, triton_cfg):
    from sentence_transformers import SentenceTransformer

    from embedforge.serving import rollout as serving
    from embedforge.serving.client import embed
    from embedforge.serving.repository import write_model_repository

    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server, precision="fp16")
    write_model_repository(tiny_export, live, cfg, 1, serve=False)
    assert serving.serve(cfg, "1").probe_cosine > 0.999  # against the FP16 graph it serves
    ref = SentenceTransformer(str(tiny_model), device="cpu").encode(TEXTS, prompt_name="query")
    assert _cos(embed(server.url, TEXTS, model="embedder"), ref).min() >= 0.995


def test_exactly_the_chosen_version_is_served(tmp_path, tiny_onnx_dir, export_dir, triton, triton_cfg):
    from embedforge.serving import rollout as serving
    from embedforge.serving.client import embed
    from embedforge.serving.repository import served_version, write_model_repository

    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server)
    write_model_repository(tiny_onnx_dir, live, cfg, 1, serve=False)
    write_model_repository(export_dir(tmp_path / "export-2", seed=1), live, cfg, 2, serve=False)

    serving.serve(cfg, "1")
    assert server.ready() == all_on("1")
    v1 = embed(server.url, TEXTS[:1], model="embedder")
    serving.serve(cfg, "2")  # the higher version folder was there all along; only now is it served
    assert server.ready() == all_on("2")
    v2 = embed(server.url, TEXTS[:1], model="embedder")
    assert _cos(v1, v2)[0] < 0.9  # another model (seed 1) answers now
    np.testing.assert_allclose(v2, serving.reference_embedding(live, "embedder", "2", TEXTS[:1]), atol=1e-5)
    serving.serve(cfg, "1")  # back to the lower version
    assert server.ready() == all_on("1") and served_version(live, "embedder") == "1"
    np.testing.assert_allclose(embed(server.url, TEXTS[:1], model="embedder"), v1, atol=1e-6)


def test_the_repository_api_needs_the_admin_key_and_inference_does_not(tmp_path, tiny_onnx_dir, triton, triton_cfg,
                                                                       monkeypatch):
    """Triton started as manifests/base/triton.yaml starts it: the repository API behind a header value."""
    from embedforge.errors import ServingError
    from embedforge.serving import rollout as serving
    from embedforge.serving.client import ADMIN_HEADER, ADMIN_KEY_ENV, embed
    from embedforge.serving.repository import write_model_repository

    key = "k3y-" + "9" * 20
    live = tmp_path / "models"
    restricted = f"model-repository,model-config,shared-memory:{ADMIN_HEADER}={key}"
    server = triton(live, extra_args=(f"--http-restricted-api={restricted}",))
    cfg = triton_cfg(live, server)
    write_model_repository(tiny_onnx_dir, live, cfg, 1, serve=False)

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    with pytest.raises(ServingError, match=ADMIN_KEY_ENV):
        serving.serve(cfg, "1")  # promote without the key cannot load anything
    monkeypatch.setenv(ADMIN_KEY_ENV, "wrong")
    with pytest.raises(ServingError, match=ADMIN_KEY_ENV):
        serving.serve(cfg, "1")
    monkeypatch.setenv(ADMIN_KEY_ENV, key)
    assert serving.serve(cfg, "1").probe_cosine > 0.999
    assert server.ready() == all_on("1")
    monkeypatch.delenv(ADMIN_KEY_ENV)
    assert embed(server.url, TEXTS[:2], model="embedder").shape[0] == 2  # applications need no key
    assert key not in server.log()


def test_a_poll_mode_server_is_waited_for(tmp_path, tiny_onnx_dir, export_dir, triton, triton_cfg):
    """A server in poll mode refuses explicit loads: the rollout waits for its scan to serve exactly v2."""
    from embedforge.serving import rollout as serving
    from embedforge.serving.repository import write_model_repository

    live = tmp_path / "models"
    cfg = triton_cfg(live)
    write_model_repository(tiny_onnx_dir, live, cfg, 1)  # served from the start
    server = triton(live, poll_secs=1)
    cfg = triton_cfg(live, server)
    assert serving.serve(cfg, "1").replicas[0].mode == "poll"
    write_model_repository(export_dir(tmp_path / "export-2", seed=1), live, cfg, 2, serve=False)
    rollout = serving.serve(cfg, "2")
    assert rollout.replicas[0].mode == "poll" and rollout.probe_cosine > 0.999
    assert server.ready() == all_on("2")


def test_a_broken_version_does_not_replace_the_serving_one(tmp_path, tiny_onnx_dir, triton, triton_cfg):
    from embedforge.errors import ServingError
    from embedforge.serving import rollout as serving
    from embedforge.serving.client import embed
    from embedforge.serving.repository import served_version, write_model_repository

    live = tmp_path / "models"
    server = triton(live)
    cfg = triton_cfg(live, server)
    write_model_repository(tiny_onnx_dir, live, cfg, 1, serve=False)
    serving.serve(cfg, "1")
    before = embed(server.url, TEXTS[:1], model="embedder")
    write_model_repository(tiny_onnx_dir, live, cfg, 2, serve=False)
    (live / "embedder_onnx" / "2" / "model.onnx").write_bytes(b"\x08\x07truncated upload")

    with pytest.raises(ServingError, match=rf"{server.url}.*version 2.*could not load 'embedder_onnx'"):
        serving.serve(cfg, "2")
    assert server.ready() == all_on("1")
    assert served_version(live, "embedder") == "1"
    np.testing.assert_allclose(embed(server.url, TEXTS[:1], model="embedder"), before, atol=1e-6)


def test_two_replicas_and_one_dies_mid_rollout(tmp_path, tiny_onnx_dir, export_dir, triton, triton_cfg):
    """Two real servers share one repository: a rollout loads and probes each; when the second dies after the
    first switched, the first is put back on the version served before and the error names the dead one."""
    from embedforge.errors import ServingError
    from embedforge.serving import rollout as serving
    from embedforge.serving.client import embed
    from embedforge.serving.repository import served_version, write_model_repository

    live = tmp_path / "models"
    a, b = triton(live), triton(live)
    cfg = triton_cfg(live, a, b)
    write_model_repository(tiny_onnx_dir, live, cfg, 1, serve=False)
    rollout = serving.serve(cfg, "1")
    assert [r.url for r in rollout.replicas] == [a.url, b.url]
    assert a.ready() == b.ready() == all_on("1")

    write_model_repository(export_dir(tmp_path / "export-2", seed=1), live, cfg, 2, serve=False)
    b.kill()
    with pytest.raises(ServingError, match=rf"{b.url}.*(cannot reach|not live)"):
        serving.serve(cfg, "2")
    assert served_version(live, "embedder") == "1"
    assert a.ready() == all_on("1")  # a had switched to 2, and is back on 1
    np.testing.assert_allclose(embed(a.url, TEXTS[:1], model="embedder"),
                               serving.reference_embedding(live, "embedder", "1", TEXTS[:1]), atol=1e-5)


def test_a_server_serving_another_model_under_that_name_is_caught(tmp_path, tiny_onnx_dir, export_dir, triton,
                                                                  triton_cfg):
    """The server reads another repository whose version 3 is a different model: ready, but not ours."""
    from embedforge.errors import ServingError
    from embedforge.serving import rollout as serving
    from embedforge.serving.repository import write_model_repository

    other, live = tmp_path / "other-repo", tmp_path / "models"
    server = triton(other)
    write_model_repository(export_dir(tmp_path / "other-export", seed=1), other, triton_cfg(other), 3)
    write_model_repository(tiny_onnx_dir, live, triton_cfg(live), 3)
    with pytest.raises(ServingError, match="differs from the exported model"):
        serving.roll_out(server.url, live, "embedder", "3", timeout_s=60)


def test_unreachable_server_and_bad_url_are_clear_errors(tmp_path, tiny_onnx_dir, triton_cfg):
    from embedforge.errors import ServingError
    from embedforge.serving.repository import write_model_repository
    from embedforge.serving.rollout import roll_out

    write_model_repository(tiny_onnx_dir, tmp_path, triton_cfg(tmp_path), 3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ServingError, match=f"127.0.0.1:{port}.*(cannot reach|not live)"):
        roll_out(f"http://127.0.0.1:{port}", tmp_path, "embedder", "3", timeout_s=5)
    with pytest.raises(ServingError, match="not an http"):
        roll_out("ftp://triton:8000", tmp_path, "embedder", "3", timeout_s=5)


def test_replica_endpoints():
    from pydantic import ValidationError

    from embedforge.config import TritonConfig
    from embedforge.serving.rollout import endpoints

    assert endpoints("http://svc:8000") == ["http://svc:8000"]
    assert endpoints("http://svc:8000", ["http://a:8000", "http://b:8000", "http://a:8000"]) == [
        "http://a:8000", "http://b:8000"]
    assert endpoints("http://127.0.0.1:8000", discover=True) == ["http://127.0.0.1:8000"]
    with pytest.raises(ValidationError, match="needs triton.repository_dir"):
        TritonConfig(server_url="http://triton:8000")

"""The OpenAI-compatible embeddings API (embedforge.serving.openai_api) in front of a real ``tritonserver``, called
with the real ``openai`` client: vectors equal the Triton client's, base64 and ``dimensions`` as OpenAI defines
them, NIM's ``input_type``, usage counted as the served tokenizer counts, OpenAI-shaped errors, concurrent
requests coalesced into fewer Triton requests, following a rollout, and a Triton outage as 503. The micro-batcher's
rules are also tested on their own (no server)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from mlflow_server import free_port
from triton_server import TritonServer

pytest_plugins = ["conftest_mlflow", "conftest_triton"]

MODEL = "embedder"
ALIAS = "embedforge-embedder"
MAX_LEN = 24  # the served max_seq_length: long texts are cut, so usage shows the truncation
MAX_BATCH = 16  # the ensemble's max_batch_size: a request of 40 inputs takes 3 Triton requests
LONG = " ".join(["the yield statement suspends a generator and hands a value back to its caller"] * 10)
TEXTS = ["what does the yield statement do", "break out of a loop early", LONG]
TRAINED_DIMS = [8, 4]  # what the served export records as its Matryoshka dimensions


# ------------------------------------------------------------------------------------------- fixtures
class ApiThread:
    """The API app under uvicorn in a thread of this process (its ``app.state.service`` stays inspectable)."""

    def __init__(self, settings):
        import uvicorn

        from embedforge.serving.openai_api import create_app

        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name=f"api-{self.port}", daemon=True)

    @property
    def service(self):
        return self.app.state.service

    def start(self) -> "ApiThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture
def start_api():
    started: list[ApiThread] = []

    def start(url: str, **overrides) -> ApiThread:
        from embedforge.serving.openai_api import ApiSettings

        api = ApiThread(ApiSettings(**{"triton_url": url, "model": MODEL, **overrides})).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def _export(src: Path, out: Path, max_len: int) -> Path:
    """An export folder of the tiny ONNX embedder (prompts "query: "/"passage: ") served at ``max_len`` tokens,
    recorded as trained with the Matryoshka dimensions :data:`TRAINED_DIMS`."""
    from embedforge.retrieval.dimensions import record_trained_dims

    shutil.copytree(src, out)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}))
    record_trained_dims(out, TRAINED_DIMS)
    return out


def _triton_config(live: Path, server):
    from embedforge.config import TritonConfig

    return TritonConfig(model_name=MODEL, instance_kind="KIND_CPU", embedder_backend="python",
                        repository_dir=str(live), server_url=server.url, ready_timeout_s=60, max_batch_size=MAX_BATCH)


@pytest.fixture(scope="module")
def served(tmp_path_factory, triton_runtime, tiny_onnx_dir):
    """One real tritonserver for the module, serving version 1 of the tiny embedder: (server, repository)."""
    from embedforge.serving import rollout
    from embedforge.serving.repository import write_model_repository

    root = tmp_path_factory.mktemp("openai-api")
    live = root / "models"
    server = TritonServer(live, triton_runtime, log_dir=root).start()
    try:
        cfg = _triton_config(live, server)
        write_model_repository(_export(tiny_onnx_dir, root / "onnx", MAX_LEN), live, cfg, 1, serve=False)
        rollout.serve(cfg, "1")
        yield server, live
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(served):
    """The API in front of ``served``, counting usage with the repository's tokenizer, with an alias."""
    from embedforge.serving.openai_api import ApiSettings, create_app  # noqa: F401 - import errors surface here

    server, live = served
    holder = ApiThread(ApiSettings(triton_url=server.url, model=MODEL, aliases=(ALIAS,), repository=str(live)))
    holder.start()
    yield holder
    holder.stop()


def _embed(server, texts, input_type="query"):
    """The reference: the Triton client, in requests of at most the ensemble's max batch."""
    from embedforge.serving.client import embed

    return np.concatenate([embed(server.url, texts[i:i + MAX_BATCH], input_type=input_type, model=MODEL)
                           for i in range(0, len(texts), MAX_BATCH)])


def _vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _post(url: str, body: bytes, path: str = "/v1/embeddings", method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}{path}", data=body if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _served_token_count(server, texts, input_type) -> int:
    """Tokens the server's own tokenizer model produces for ``texts``: the sum of its attention masks."""
    from tritonclient.http import InferInput

    from embedforge.serving.client import http_client

    inputs = [InferInput("text", [len(texts), 1], "BYTES"), InferInput("input_type", [len(texts), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[input_type.encode()]] * len(texts), dtype=object))
    client = http_client(server.url)
    try:
        return int(client.infer(f"{MODEL}_tokenizer", inputs).as_numpy("attention_mask").sum())
    finally:
        client.close()


# ------------------------------------------------------------------------------------ through the API
def test_string_and_list_inputs_equal_the_triton_client(served, api):
    server, _ = served
    client = api.client()
    one = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert one.object == "list" and one.model == MODEL and len(one.data) == 1 and one.data[0].object == "embedding"
    np.testing.assert_allclose(_vectors(one), _embed(server, TEXTS[:1]), atol=1e-6)

    many = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    expected = _embed(server, TEXTS)
    np.testing.assert_allclose(_vectors(many), expected, atol=1e-6)
    assert np.linalg.norm(_vectors(many), axis=1) == pytest.approx(1.0, abs=1e-5)
    # the client's default: it asks for base64 and decodes it itself
    np.testing.assert_allclose(_vectors(client.embeddings.create(model=MODEL, input=TEXTS)), expected, atol=1e-6)
    # the alias is the same model
    np.testing.assert_allclose(_vectors(client.embeddings.create(model=ALIAS, input=TEXTS)), expected, atol=1e-6)

    # exactly OpenAI's response shape, on the wire
    status, body = _post(api.url, json.dumps({"model": MODEL, "input": TEXTS[:2]}).encode())
    assert status == 200 and set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == MODEL
    assert [set(d) for d in body["data"]] == [{"object", "index", "embedding"}] * 2
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0

    # more inputs than the ensemble's max batch: split into ceil(40 / 16) = 3 Triton requests, order kept
    texts = [f"{TEXTS[i % 2]} number {i}" for i in range(40)]
    before = api.service.batcher.stats.batches
    big = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert api.service.batcher.stats.batches - before == 3 and api.service.batcher.max_batch == MAX_BATCH
    np.testing.assert_allclose(_vectors(big), _embed(server, texts), atol=1e-6)


def test_base64_decodes_to_the_same_floats(api):
    client = api.client()
    floats = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    b64 = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
    for f, b in zip(floats.data, b64.data, strict=True):
        assert isinstance(b.embedding, str)
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        assert np.array_equal(decoded, np.array(f.embedding, dtype=np.float32))  # bit for bit


def test_dimensions_keep_a_prefix_renormalised(api):
    client = api.client()
    full = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))
    assert full.shape == (3, 8)
    short = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, dimensions=3, encoding_format="float"))
    assert short.shape == (3, 3)
    np.testing.assert_allclose(short, full[:, :3] / np.linalg.norm(full[:, :3], axis=1, keepdims=True), atol=1e-6)
    assert np.linalg.norm(short, axis=1) == pytest.approx(1.0, abs=1e-6)
    same = client.embeddings.create(model=MODEL, input=TEXTS, dimensions=8)  # base64 through the client
    np.testing.assert_allclose(_vectors(same), full, atol=0)
    for bad in (0, 9, -1):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model=MODEL, input=TEXTS, dimensions=bad)
        assert err.value.param == "dimensions" and err.value.type == "invalid_request_error"


def test_input_type_picks_the_saved_prompt_and_truncate_is_accepted(served, api):
    server, _ = served
    client = api.client()
    query = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"input_type": "query"}))
    passage = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"input_type": "passage"}))
    document = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"input_type": "document"}))
    default = _vectors(client.embeddings.create(model=MODEL, input=TEXTS))
    np.testing.assert_allclose(document, passage, atol=0)  # one vocabulary: document; NIM's passage its alias
    np.testing.assert_allclose(query, _embed(server, TEXTS, "query"), atol=1e-6)
    np.testing.assert_allclose(passage, _embed(server, TEXTS, "passage"), atol=1e-6)
    np.testing.assert_allclose(default, query, atol=0)  # NIM's default
    assert ((query * passage).sum(1) < 0.9999).all()  # "query: " and "passage: " prompts: different vectors
    for truncate in ("NONE", "START", "END"):  # accepted; the served tokenizer always cuts the end
        got = client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"truncate": truncate})
        np.testing.assert_allclose(_vectors(got), query, atol=0)


def test_usage_counts_the_tokens_the_served_tokenizer_makes(served, api):
    from tokenizers import Tokenizer

    server, _ = served
    client = api.client()
    for input_type in ("query", "passage", "document"):
        got = client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"input_type": input_type}).usage
        assert got.prompt_tokens == got.total_tokens == _served_token_count(server, TEXTS, input_type)
    # and that is: prompt + text, special tokens included, each cut at the served max_seq_length
    tok = Tokenizer.from_file(str(served[1] / f"{MODEL}_tokenizer" / "1" / "tokenizer" / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lengths = [len(tok.encode("query: " + t).ids) for t in TEXTS]
    assert lengths[2] > MAX_LEN
    assert client.embeddings.create(model=MODEL, input=TEXTS).usage.prompt_tokens == sum(
        min(n, MAX_LEN) for n in lengths)
    assert api.service.counter.exact


def test_models_health_and_the_served_version(api):
    client = api.client()
    assert [m.id for m in client.models.list()] == [MODEL, ALIAS]
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="x")
    assert raw.headers["x-embedforge-model-version"] == "1"
    status, listed = _post(api.url, b"", "/v1/models", "GET")  # the width and the trained Matryoshka dimensions
    assert status == 200 and [(m["dimensions"], m["matryoshka_dims"]) for m in listed["data"]] == [(8, TRAINED_DIMS)] * 2
    for path in ("/v1/health/live", "/v1/health/ready"):
        with urllib.request.urlopen(api.url + path, timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["object"] == "health.response"


def _error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as err:
        call()
    exc = err.value
    body = exc.body  # the client hands over the "error" object of the body
    assert set(body) == {"message", "type", "param", "code"} and body["message"], body
    assert (exc.code, exc.param, exc.type) == (body["code"], body["param"], body["type"])
    return exc.status_code, body


def test_every_error_has_openai_shape(api):
    client = api.client()
    emb = client.embeddings.create
    cases = [  # (call, status, param, code, openai exception)
        (lambda: emb(model="text-embedding-3-small", input="x"), 404, "model", "model_not_found", openai.NotFoundError),
        (lambda: emb(model=MODEL, input=""), 400, "input", "invalid_value", openai.BadRequestError),
        (lambda: emb(model=MODEL, input=["ok", ""]), 400, "input", "invalid_value", openai.BadRequestError),
        (lambda: emb(model=MODEL, input=[]), 400, "input", "invalid_value", openai.BadRequestError),
        (lambda: emb(model=MODEL, input=[101, 2054, 102]), 400, "input", "token_ids_not_supported",
         openai.BadRequestError),
        (lambda: emb(model=MODEL, input=[[101, 2054, 102]]), 400, "input", "token_ids_not_supported",
         openai.BadRequestError),
        (lambda: emb(model=MODEL, input=["ok", 3]), 400, "input", "invalid_type", openai.BadRequestError),
        (lambda: emb(model=MODEL, input="x", encoding_format="int8"), 400, "encoding_format", "invalid_value",
         openai.BadRequestError),
        (lambda: emb(model=MODEL, input="x", dimensions=9), 400, "dimensions", "invalid_value", openai.BadRequestError),
        (lambda: emb(model=MODEL, input="x", extra_body={"input_type": "summary"}), 400, "input_type",
         "invalid_value", openai.BadRequestError),
        (lambda: emb(model=MODEL, input="x", extra_body={"truncate": "MIDDLE"}), 400, "truncate", "invalid_value",
         openai.BadRequestError),
        (lambda: emb(model=MODEL, input=["a"] * 2049), 413, "input", "too_many_inputs", openai.APIStatusError),
    ]
    for call, status, param, code, kind in cases:
        with pytest.raises(kind):
            call()
        got_status, body = _error_of(call)
        assert (got_status, body["param"], body["code"]) == (status, param, code), body
        assert body["type"] == "invalid_request_error"

    # what the client cannot send: bad JSON, no model, unknown routes and methods
    for raw, code in ((b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"),
                      (b"[" * 100_000, "invalid_json"),  # deeper than the JSON parser recurses
                      (b'{"input": "x"}', "missing_required_parameter"),
                      (f'{{"model": "{MODEL}", "input": ["ok", "\\ud800"]}}'.encode(), "invalid_value")):
        status, body = _post(api.url, raw)
        assert status == 400 and body["error"]["code"] == code and set(body["error"]) == {"message", "type", "param",
                                                                                          "code"}, (raw[:60], body)
    status, body = _post(api.url, b"", path="/v1/completions")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = _post(api.url, b"", method="GET")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_concurrent_requests_are_answered_and_coalesced(served, start_api):
    """32 client threads at once, queries and passages mixed: each gets its own texts' vectors, and the batcher
    sent fewer Triton requests than it received (Triton's own statistics agree). Two Triton requests in flight at
    most, so that requests must queue: with the default 32 slots, whether 32 requests ever wait for one depends
    on how fast the event loop hands them over."""
    from embedforge.serving.client import http_client

    server, live = served
    api = start_api(server.url, repository=str(live), max_inflight=2)
    jobs = [([f"{TEXTS[k % 3]} (client {k})", f"another text of client {k}"], "passage" if k % 2 else "query")
            for k in range(32)]
    expected = {k: _embed(server, texts, kind) for k, (texts, kind) in enumerate(jobs)}
    triton = http_client(server.url)

    def ensemble_requests() -> int:
        return int(triton.get_inference_statistics(MODEL)["model_stats"][0]["inference_stats"]["success"]["count"])

    stats, triton_before = api.service.batcher.stats.as_dict(), ensemble_requests()
    barrier = threading.Barrier(len(jobs))
    results: dict[int, object] = {}

    def call(k: int) -> None:
        client = api.client()
        barrier.wait()
        texts, kind = jobs[k]
        try:
            results[k] = client.embeddings.create(model=MODEL, input=texts, extra_body={"input_type": kind})
        except Exception as exc:  # noqa: BLE001 - reported below
            results[k] = exc

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    failures = {k: r for k, r in results.items() if isinstance(r, Exception)}
    assert len(results) == len(jobs) and not failures, failures
    for k, response in results.items():
        np.testing.assert_allclose(_vectors(response), expected[k], atol=1e-6, err_msg=f"client {k}")
    after = api.service.batcher.stats.as_dict()
    requests, batches = after["requests"] - stats["requests"], after["batches"] - stats["batches"]
    assert requests == 32 and batches < requests, after
    assert ensemble_requests() - triton_before == batches
    triton.close()


def test_follows_a_rollout_and_reports_triton_down_as_503(tmp_path, tiny_onnx_dir, triton, start_api):
    """Version 2 (another max_seq_length) is rolled out under a running API: within refresh_s the API reports it
    and counts with its tokenizer. Then Triton dies: embeddings and readiness answer 503, liveness stays 200; an API
    started while Triton is unreachable answers 503 too, without the credentials of its Triton URL."""
    from embedforge.serving import rollout
    from embedforge.serving.repository import write_model_repository

    live = tmp_path / "models"
    server = triton(live)
    cfg = _triton_config(live, server)
    write_model_repository(_export(tiny_onnx_dir, tmp_path / "v1", MAX_LEN), live, cfg, 1, serve=False)
    write_model_repository(_export(tiny_onnx_dir, tmp_path / "v2", 8), live, cfg, 2, serve=False)
    rollout.serve(cfg, "1")
    api = start_api(server.url, repository=str(live), refresh_s=0.2)
    client = api.client()
    v1 = client.embeddings.with_raw_response.create(model=MODEL, input=[LONG])
    assert v1.headers["x-embedforge-model-version"] == "1" and v1.parse().usage.prompt_tokens == MAX_LEN

    rollout.serve(cfg, "2")
    deadline = time.monotonic() + 30
    while True:
        raw = client.embeddings.with_raw_response.create(model=MODEL, input=[LONG])
        if raw.headers["x-embedforge-model-version"] == "2" and raw.parse().usage.prompt_tokens == 8:
            break
        assert time.monotonic() < deadline, (raw.headers, raw.parse().usage)
        time.sleep(0.1)

    server.kill()
    status, body = _error_of(lambda: client.embeddings.create(model=MODEL, input="x"))
    assert status == 503 and body["type"] == "server_error" and body["code"] == "triton_unavailable"
    assert server.url in body["message"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(api.url + "/v1/health/ready", timeout=10)
    assert err.value.code == 503
    with urllib.request.urlopen(api.url + "/v1/health/live", timeout=10) as resp:
        assert resp.status == 200

    nowhere = start_api(f"http://probe:hunter2@127.0.0.1:{free_port()}")  # credentials never reach clients
    status, body = _error_of(lambda: nowhere.client().embeddings.create(model=MODEL, input="x"))
    assert status == 503 and body["code"] == "triton_unavailable"
    assert "probe:***@127.0.0.1" in body["message"] and "hunter2" not in body["message"], body


# ------------------------------------------------------------------------------------ the command
def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedforge.cli", "serve", *args]


def test_embedforge_serve_answers_clients_and_logs_no_traceback_for_their_errors(served, tmp_path):
    """``embedforge serve`` as deployed (its own process, the manifest's options): the openai client gets the
    Triton client's vectors under the name and the alias; a batch of client mistakes gets 4xx bodies and leaves no
    traceback in the server's log; SIGTERM ends it gracefully."""
    server, live = served
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(_serve_cmd(f"--url={server.url}", f"--model={MODEL}", f"--alias={ALIAS}",
                                       f"--repository={live}", "--host=127.0.0.1", f"--port={port}"),
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EMBEDFORGE_DEBUG": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/v1/health/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        for name in (MODEL, ALIAS):
            got = client.embeddings.create(model=name, input=TEXTS, extra_body={"input_type": "passage"})
            np.testing.assert_allclose(_vectors(got), _embed(server, TEXTS, "passage"), atol=1e-6)
        assert [m.id for m in client.models.list()] == [MODEL, ALIAS]

        mistakes = [{"model": "nope", "input": "x"}, {"model": MODEL, "input": ""}, {"model": MODEL, "input": [1.5]},
                    {"model": MODEL, "input": ["a"] * 2049}, {"model": MODEL, "input": "x", "encoding_format": "hex"},
                    {"model": MODEL, "input": "x", "dimensions": 4096}, {"model": MODEL, "input": "x", "dimensions": "8"}]
        for body in mistakes:
            status, answer = _post(url, json.dumps(body).encode())
            assert 400 <= status < 500 and answer["error"]["type"] == "invalid_request_error", (body, answer)
        for raw in (b"{", b"[" * 100_000, b'{"model": "embedder", "input": "\\udfff"}'):
            assert _post(url, raw)[0] == 400
        assert _post(url, b"", path="/v2/anything", method="GET")[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    output = Path(log.name).read_text()
    # uvicorn shuts down gracefully, then re-raises the signal so that the process ends as signalled
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in output, (code, output)
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output


@pytest.mark.parametrize(("args", "message"), [
    (["--url=ftp://triton:8000"], "Triton URL 'ftp://triton:8000' is not an http(s)://host:port URL"),
    (["--url=http://127.0.0.1:8000", "--repository=/no/such/models"], "model repository /no/such/models is not a folder"),
    (["--url=http://127.0.0.1:8000", "--tokenizer=/no/such/tokenizer"], "/no/such/tokenizer has no tokenizer.json"),
    (["--url=http://127.0.0.1:8000", "--model="], "model '': must be a Triton model name"),
])
def test_embedforge_serve_refuses_bad_options_in_one_line(args, message):
    r = subprocess.run(_serve_cmd(*args), capture_output=True, text=True, timeout=120,
                       env={**os.environ, "EMBEDFORGE_DEBUG": "", "COLUMNS": "400"})
    assert r.returncode == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_embedforge_serve_options_are_the_settings():
    """Every option of ``embedforge serve`` but where to listen and what to log is an :class:`ApiSettings` field
    under its own name, with the same default (so the command and the library cannot drift apart)."""
    import dataclasses

    import typer

    from embedforge.cli import app
    from embedforge.serving.openai_api import ApiSettings

    command = typer.main.get_command(app).commands["serve"]
    options = {p.name: p.default for p in command.params if p.name not in ("host", "port", "access_log")}
    fields = {f.name: f.default for f in dataclasses.fields(ApiSettings)}
    renamed = {"url": "triton_url"}
    assert {renamed.get(n, n) for n in options} == fields.keys() - {"max_request_bytes"}
    for name, default in options.items():
        want = fields[renamed.get(name, name)]
        if name == "aliases":
            assert not default and want == ()
        elif name != "url":
            assert default == want, (name, default, want)


# ---------------------------------------------------------------------------------- the batcher alone
def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batcher_splits_coalesces_and_keeps_order():
    from embedforge.serving.microbatch import MicroBatcher

    async def main():
        gate = asyncio.Event()
        calls: list[list[int]] = []

        async def run(rows):
            calls.append(list(rows))
            await gate.wait()
            return np.array(rows, dtype=np.float32)[:, None] * 2

        b = MicroBatcher(run, max_batch=4, max_inflight=1)
        first = asyncio.ensure_future(b.submit([0]))  # sent at once: a slot is free
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(b.submit(list(range(10 * k, 10 * k + 2)))) for k in range(1, 4)]
        big = asyncio.ensure_future(b.submit(list(range(100, 106))))  # 6 rows, max 4: two items
        await asyncio.sleep(0.01)
        gate.set()
        got = await asyncio.gather(first, *rest, big)
        await b.close()
        return calls, got, b.stats

    calls, got, stats = _run(main())
    assert calls[0] == [0]
    assert calls[1] == [10, 11, 20, 21]  # queued while the slot was busy: one call, whole requests only
    # the oldest leads; the 4-row half of the big request does not fit beside it, its 2-row half does
    assert calls[2:] == [[30, 31, 104, 105], [100, 101, 102, 103]]
    assert [g.ravel().tolist() for g in got] == [[0], [20, 22], [40, 42], [60, 62], [2 * x for x in range(100, 106)]]
    assert stats.as_dict() == {"requests": 5, "rows": 13, "batches": 4, "largest_batch": 4}


@pytest.mark.parametrize("max_padding", [0.25, None])
def test_batcher_keeps_padding_bounded(max_padding):
    """Rows of very different lengths are not coalesced (the tokenizer pads a request to its longest row), unless
    padding is allowed; equal lengths always are."""
    from embedforge.serving.microbatch import MicroBatcher

    async def main():
        gate = asyncio.Event()
        calls: list[list[str]] = []

        async def run(rows):
            calls.append(list(rows))
            await gate.wait()
            return np.zeros((len(rows), 1), dtype=np.float32)

        b = MicroBatcher(run, max_batch=8, max_inflight=1, max_padding=max_padding)
        busy = asyncio.ensure_future(b.submit(["busy"], [5]))
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(b.submit([name], [n]))
                  for name, n in (("short-a", 10), ("long", 200), ("short-b", 11), ("short-c", 9))]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(busy, *queued)
        await b.close()
        return calls[1:]

    calls = _run(main())
    if max_padding is None:
        assert calls == [["short-a", "long", "short-b", "short-c"]]
    else:
        assert calls == [["short-a", "short-b", "short-c"], ["long"]]


def test_batcher_failure_and_cancellation_stay_with_their_requests():
    from embedforge.serving.microbatch import MicroBatcher

    async def main():
        seen: list[list[str]] = []
        gate = asyncio.Event()

        async def run(rows):
            seen.append(list(rows))
            await gate.wait()
            if "bad" in rows:
                raise RuntimeError("boom")
            return np.zeros((len(rows), 1), dtype=np.float32)

        b = MicroBatcher(run, max_batch=2, max_inflight=1)
        busy = asyncio.ensure_future(b.submit(["a"]))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(b.submit(["gone"]))
        bad = asyncio.ensure_future(b.submit(["bad"]))
        good = asyncio.ensure_future(b.submit(["ok", "ok"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # its client went away while it was queued
        gate.set()
        results = await asyncio.gather(busy, bad, good, return_exceptions=True)
        await b.close()
        return seen, results

    seen, (busy, bad, good) = _run(main())
    assert ["gone"] not in seen and all("gone" not in rows for rows in seen)
    assert isinstance(bad, RuntimeError) and busy.shape == (1, 1) and good.shape == (2, 1)


def test_batcher_window_waits_for_more_rows():
    from embedforge.serving.microbatch import MicroBatcher

    async def main():
        calls = []

        async def run(rows):
            calls.append(list(rows))
            return np.zeros((len(rows), 1), dtype=np.float32)

        b = MicroBatcher(run, max_batch=8, max_inflight=4, window_s=0.2)
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, b.submit([2]))
        await b.close()
        return calls

    assert _run(main()) == [[1, 2]]

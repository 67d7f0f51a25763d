"""The LLM generator against endpoints that misbehave, each a REAL HTTP server on 127.0.0.1
(tests/support/llm_servers.py:FaultServer), through the real OpenAI SDK:

* ``GET /models`` answering 200 with a body that is not JSON, or a malformed model list, is one line
  (``ConfigError``), never a ``JSONDecodeError``/``AttributeError`` traceback;
* a server that trickles its reply a byte at a time is cut off at the pre-flight's deadline and at a chat
  request's ``timeout_s`` — a total deadline, not a per-read one;
* an endpoint that stops answering stops the run after ``sdg.llm.max_consecutive_failures`` documents, with one
  line naming the endpoint (redacted) and the last error, instead of trying every document;
* the API key never shows, even when the endpoint echoes the ``Authorization`` header in its 401 body; a
  ``base_url`` with credentials is written redacted into the sdg manifest, and the real URL — from
  ``sdg.llm.base_url_env`` — is still the one requests go to.

Timing assertions compare a deadline of 1 s with a server that trickles for 30 s: only a broken deadline can
reach the bound, however slow the machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from llm_servers import FaultServer

from embedforge.config import LlmSdgConfig, SdgConfig
from embedforge.contracts import MANIFEST, read_chunks
from embedforge.errors import ConfigError

#: How long a trickling server keeps sending: far beyond every deadline these tests set.
TRICKLE_S = 30.0
#: A bound no working deadline of 1 s comes near, and a broken one (TRICKLE_S) always exceeds.
WITHIN_S = 15.0


@pytest.fixture
def no_keys(monkeypatch):
    for name in ("NVIDIA_API_KEY", "OPENAI_API_KEY", "EF_TEST_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _preflight(**llm) -> str | None:
    from embedforge.stages.sdg.llm.preflight import preflight

    try:
        preflight(LlmSdgConfig(model="fault-model", **llm))
    except ConfigError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------- pre-flight replies
def test_model_list_that_is_not_json_is_one_line(no_keys):
    with FaultServer(models_body=b"<html><body>Welcome to nginx!</body></html>") as srv:
        msg = _preflight(base_url=srv.base_url)
    assert msg is not None and "\n" not in msg
    assert msg.startswith(f"sdg.llm.base_url {srv.base_url} answered GET /models with a body that is not JSON")
    assert "Welcome to nginx" in msg and "ends in /v1" in msg


@pytest.mark.parametrize("body, says", [
    (b'{"data":[{"id":123},"x",null]}', 'entry 0 has "id" 123'),
    (b'{"data":[{"id":"fault-model"},"x",null]}', "entry 1 has str 'x'"),
    (b'{"data":[{"id":"fault-model"},null]}', "entry 1 has NoneType"),
    (b'{"models":["fault-model"]}', 'no "data" list'),
    (b'[1, 2]', 'no "data" list'),
])
def test_malformed_model_list_is_one_line(no_keys, body, says):
    with FaultServer(models_body=body) as srv:
        msg = _preflight(base_url=srv.base_url)
    assert msg is not None and "\n" not in msg and msg.startswith(f"sdg.llm.base_url {srv.base_url} answered GET /models")
    assert says in msg, msg
    assert srv.log == []  # no chat request was sent on a broken list


def test_an_empty_model_list_falls_back_to_one_tiny_request_per_model(no_keys):
    with FaultServer(models_body=b'{"data": []}') as srv:
        assert _preflight(base_url=srv.base_url) is None
        assert len(srv.log) == 1


# ---------------------------------------------------------------------------------------- total deadlines
def test_preflight_deadline_is_total_not_per_read(no_keys, monkeypatch):
    from embedforge.stages.sdg.llm import preflight as pf

    monkeypatch.setattr(pf, "TIMEOUT_S", 1.0)
    with FaultServer(models_trickle=True, slow_s=TRICKLE_S, trickle_s=0.2) as srv:
        started = time.monotonic()
        msg = _preflight(base_url=srv.base_url)
        took = time.monotonic() - started
    assert msg == (f"sdg.llm.base_url {srv.base_url} did not answer within 1 s: check that the server is up and "
                   "sdg.llm.base_url is right")
    assert took < WITHIN_S, f"the pre-flight waited {took:.1f} s for a trickling server"
    assert srv.trickled_bytes >= 1  # the server really was sending (each byte restarts a per-read timeout)


def test_chat_request_deadline_is_total_not_per_read():
    from embedforge.stages.sdg.llm.backends import Retryable, StageSettings
    from embedforge.stages.sdg.llm.openai_backend import OpenAIBackend

    settings = StageSettings("qa", "fault-model", 0.0, 1.0, 32, timeout_s=1.0)

    async def ask(backend: OpenAIBackend) -> None:
        try:
            await backend.chat([{"role": "user", "content": "hi"}], settings, None)
        finally:
            await backend.close()

    with FaultServer(script=["trickle"], slow_s=TRICKLE_S, trickle_s=0.2) as srv:
        started = time.monotonic()
        with pytest.raises(Retryable) as err:
            asyncio.run(ask(OpenAIBackend(srv.base_url, None)))
        took = time.monotonic() - started
    assert err.value.kind == "timeout" and str(err.value) == "no reply within 1s"
    assert took < WITHIN_S, f"a chat request with timeout_s=1 took {took:.1f} s against a trickling server"


# ------------------------------------------------------------------------------------- a dead endpoint
def _llm_cfg(srv: FaultServer, work: Path, base_model: str, **llm) -> SdgConfig:
    settings = {"base_url": srv.base_url, "model": "fault-model", "work_dir": str(work), "dedup_model": base_model,
                "num_pairs": 2, "query_type_counts": {"multi_hop": 1, "structural": 1}, "max_retries": 0,
                "max_concurrency": 1, "max_failed_fraction": 1.0, **llm}
    return SdgConfig(generator="llm", llm=settings)


def test_default_stops_after_eight_documents_without_a_reply():
    assert LlmSdgConfig().max_consecutive_failures == 8


def test_dead_endpoint_stops_after_consecutive_failures_naming_it(tmp_path, chunks_dir, base_model):
    from embedforge.stages.sdg import make_generator
    from embedforge.stages.sdg.llm import LlmSdgError

    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train"]
    assert len({c.doc_id for c in chunks}) > 3
    with FaultServer(stage_faults={"artifacts": "500"}) as srv:
        gen = make_generator(_llm_cfg(srv, tmp_path / "work", base_model, max_consecutive_failures=3))
        with pytest.raises(LlmSdgError) as err:
            gen.generate(chunks, "train")
        sent = len(srv.log)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"sdg.llm: 3 documents/bundles in a row got no usable reply from sdg.llm.base_url "
                          f"{srv.base_url} (last error, at artifacts: ")
    assert "500: internal error" in msg and "sdg.llm.max_consecutive_failures=3" in msg
    assert sent == 3  # one request per document (max_retries=0), then nothing more
    failures = (tmp_path / "work" / "train" / "failures.jsonl").read_text().splitlines()
    assert len(failures) == 3 and str(tmp_path / "work" / "train" / "failures.jsonl") in msg


def test_replies_that_fail_validation_do_not_count_as_a_dead_endpoint(tmp_path, chunks_dir, base_model):
    """The endpoint answers (with invalid JSON): the run goes through every document and fails on the fraction."""
    from embedforge.stages.sdg import make_generator
    from embedforge.stages.sdg.llm import LlmSdgError

    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train"]
    with FaultServer(stage_faults={"artifacts": "bad_json"}) as srv:
        cfg = _llm_cfg(srv, tmp_path / "work", base_model, max_consecutive_failures=2, max_units=4,
                       max_failed_fraction=0.5)
        with pytest.raises(LlmSdgError, match=r"4 of 4 documents/bundles failed in split 'train'"):
            make_generator(cfg).generate(chunks, "train")


# ---------------------------------------------------------------------------------------------- secrets
SECRET = "nvapi-TEST-SECRET-0123456789abcdef"


def test_key_echoed_by_a_401_never_reaches_the_message(no_keys):
    with FaultServer(require_key="the-right-key-000000", echo_auth=True) as srv:
        no_keys.setenv("EF_TEST_KEY", "wrong-but-secret-key-42")
        msg = _preflight(base_url=srv.base_url, api_key_env="EF_TEST_KEY")
    assert msg.startswith(f"sdg.llm.base_url {srv.base_url} refused the key in $EF_TEST_KEY: fix it")
    assert "got Authorization: Bearer ***" in msg  # the server did echo it: the message shows that, not the key
    assert "wrong-but-secret-key-42" not in msg


def test_key_echoed_in_a_chat_401_never_reaches_the_failure_records(no_keys, tmp_path, chunks_dir, base_model):
    from embedforge.stages.sdg import make_generator

    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train"]
    no_keys.setenv("EF_TEST_KEY", SECRET)
    with FaultServer(stage_faults={"artifacts": "401"}, echo_auth=True) as srv:
        cfg = _llm_cfg(srv, tmp_path / "work", base_model, api_key_env="EF_TEST_KEY", max_units=1)
        with pytest.raises(ConfigError) as err:
            make_generator(cfg).generate(chunks, "train")
    assert SECRET not in str(err.value)
    written = "".join(p.read_text() for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert SECRET not in written


def test_redact_hides_the_configured_key_wherever_it_appears(no_keys):
    from embedforge.redact import redact
    from embedforge.stages.sdg.llm.openai_backend import resolve_api_key

    key = "plain-looking-key-7f3a"  # no well-known prefix: only the registered value can hide it
    no_keys.setenv("EF_TEST_KEY", key)
    assert resolve_api_key(LlmSdgConfig(api_key_env="EF_TEST_KEY")) == (key, "EF_TEST_KEY")
    assert redact(f"upstream said: token {key} is revoked; x-key={key}") == "upstream said: token *** is revoked; x-key=***"


def test_url_credentials_are_redacted_in_the_sdg_manifest_and_printed_result(tmp_path, chunks_dir):
    """Even with the offline generator the sdg manifest records the whole sdg section, sdg.llm.base_url included."""
    from typer.testing import CliRunner

    from embedforge.cli import app

    url = f"https://alice:{SECRET}@llm.example/v1?api_key=qs-{SECRET}"
    res = CliRunner().invoke(app, ["sdg", "--chunks", str(chunks_dir), "--out", str(tmp_path / "pairs"),
                                   "--set", f"sdg.llm.base_url={url}", "--set", "sdg.max_pairs=20"])
    assert res.exit_code == 0, res.output
    manifest = (tmp_path / "pairs" / MANIFEST).read_text()
    assert SECRET not in manifest and SECRET not in res.output
    cfg = json.loads(manifest)["config"]
    assert cfg["llm"]["base_url"] == "https://alice:***@llm.example/v1?api_key=***"


def test_credentials_moved_to_the_environment_are_still_used_for_requests(no_keys, tmp_path):
    """``hide_url_credentials`` leaves base_url redacted (what process lists and manifests show) and the real URL
    in the environment: the pre-flight and the chat client send to the real one — user and password included."""
    import base64

    from embedforge.stages.sdg.llm.client import make_backend
    from embedforge.stages.sdg.llm.preflight import preflight

    with FaultServer() as srv:
        real = srv.base_url.replace("127.0.0.1", f"bob:{SECRET}@127.0.0.1")
        cfg = LlmSdgConfig(base_url=real, model="fault-model")
        env = cfg.hide_url_credentials()
        assert env == {"EMBEDFORGE_SDG_LLM_BASE_URL": real}
        assert cfg.base_url == srv.base_url.replace("127.0.0.1", "bob:***@127.0.0.1") and SECRET not in cfg.model_dump_json()
        with pytest.raises(ConfigError, match=r"sdg.llm.base_url_env names \$EMBEDFORGE_SDG_LLM_BASE_URL, which is not set"):
            preflight(cfg)
        no_keys.setenv("EMBEDFORGE_SDG_LLM_BASE_URL", real)
        assert preflight(cfg) == ["fault-model"]

        async def one_chat() -> None:
            from embedforge.stages.sdg.llm.backends import StageSettings

            backend = make_backend(cfg)
            try:
                await backend.chat([{"role": "user", "content": "Judge one synthetic pair"}],
                                   StageSettings("judge", "fault-model", 0.0, 1.0, 32, 10.0), None)
            finally:
                await backend.close()

        asyncio.run(one_chat())
    basic = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert basic in srv.auth_headers and len(srv.log) == 1

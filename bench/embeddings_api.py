"""The OpenAI-compatible embeddings API against Triton direct: texts/s and p50/p99 latency, same texts, same machine.

Exports all-MiniLM-L6-v2 (the bundled base model) and serves it on the tests' real ``tritonserver`` exactly as
``bench/serving_load.py`` does (ensemble -> Python-backend tokenizer -> embedder through onnxruntime in the Python
backend). Then starts the API as deployed, ``embedforge serve`` in its own process, in front of it, and for each
concurrency level runs two closed loops of ``--seconds`` each, one text per request, N client threads with one
keep-alive connection each:

* ``triton``: ``embedforge.serving.client.embed`` (``tritonclient.http``) straight to Triton;
* ``api``: ``POST /v1/embeddings`` with ``encoding_format=base64`` (what the ``openai`` client sends by default),
  over ``http.client``; the response is parsed and its vector decoded;
* ``triton-again``: Triton direct once more, so that a drift of the machine's load shows.

Also recorded per API run: how many Triton requests the API made for its HTTP requests (Triton's statistics for
the ensemble), i.e. how much the micro-batcher coalesced, the API process's CPU time per request, and
``throughput_ratio`` = API texts/s / the mean of the two Triton runs' texts/s.

Example::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/embeddings_api.py --concurrency 1,8,32 --seconds 15 --out api.json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from serving_load import MODEL, _texts, closed_loop, serve_exported  # noqa: E402
from serving_load import load as triton_load  # noqa: E402


def api_load(port: int, texts: list[str], concurrency: int, seconds: float) -> dict:
    """Closed loop against the API: ``concurrency`` threads, one keep-alive connection each, one text per request
    (base64, as the ``openai`` client asks), the vector decoded, for ``seconds``."""

    def call(conn: http.client.HTTPConnection, text: str) -> None:
        body = json.dumps({"model": MODEL, "input": [text], "encoding_format": "base64"})
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(data)
        np.frombuffer(base64.b64decode(data["data"][0]["embedding"]), dtype="<f4")

    return closed_loop(concurrency, seconds, texts, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=120),
                       call)


def _ensemble_requests(url: str) -> int:
    from embedforge.serving.client import http_client

    client = http_client(url)
    try:
        stats = client.get_inference_statistics(MODEL)["model_stats"][0]["inference_stats"]
        return int(stats["success"]["count"])
    finally:
        client.close()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads in Triton")
    # the API's batching options: `embedforge serve`'s defaults unless given
    ap.add_argument("--max-inflight", type=int, help="the API's Triton requests in flight")
    ap.add_argument("--window-ms", type=float, help="the API's batching window")
    ap.add_argument("--max-padding", type=float, help="the API's padding bound (< 0: none)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from mlflow_server import free_port
    from sentence_transformers import SentenceTransformer

    from embedforge.retrieval.encode import resolve_model_path
    from embedforge.serving.client import embed

    os.environ["EMBEDFORGE_ORT_THREADS"] = str(args.threads)  # read by the Python-backend embedder
    options = [f"--{name.replace('_', '-')}={value}" for name, value in
               (("max_inflight", args.max_inflight), ("window_ms", args.window_ms), ("max_padding", args.max_padding))
               if value is not None]
    texts = _texts(args.texts)
    base = resolve_model_path("all-MiniLM-L6-v2")
    model = SentenceTransformer(base, device="cpu")
    result = {"model": "all-MiniLM-L6-v2", "texts": len(texts), "threads": args.threads,
              "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
              "api_options": options or "defaults", "runs": []}

    with tempfile.TemporaryDirectory(prefix="ef-embeddings-api-") as tmp:
        tmp = Path(tmp)
        server, _ = serve_exported(model, base, texts, tmp)
        del model
        port = free_port()
        api = None
        try:
            # the API as deployed: `embedforge serve` in its own process
            api = subprocess.Popen([sys.executable, "-m", "embedforge.cli", "serve", f"--url={server.url}",
                                    f"--model={MODEL}", f"--repository={tmp / 'models'}", f"--port={port}",
                                    *options], start_new_session=True)
            _wait_ready(port, api)

            # the same vectors either way
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/embeddings", json.dumps({"model": MODEL, "input": texts[:8]}),
                         {"Content-Type": "application/json"})
            via_api = np.array([d["embedding"] for d in json.loads(conn.getresponse().read())["data"]])
            result["api_vs_triton_max_abs_diff"] = float(np.abs(via_api - embed(server.url, texts[:8],
                                                                                 model=MODEL)).max())
            triton_load(server.url, MODEL, texts, 4, 3.0)  # warm-up, both paths
            api_load(port, texts, 4, 3.0)
            for c in [int(x) for x in args.concurrency.split(",")]:
                direct = {"path": "triton", **triton_load(server.url, MODEL, texts, c, args.seconds)}
                print(json.dumps(direct), flush=True)
                before, cpu = _ensemble_requests(server.url), _cpu_s(api.pid)
                front = {"path": "api", **api_load(port, texts, c, args.seconds)}
                front["triton_requests"] = _ensemble_requests(server.url) - before
                front["api_cpu_ms_per_request"] = round(1000 * (_cpu_s(api.pid) - cpu) / max(1, front["requests"]), 2)
                print(json.dumps(front), flush=True)
                after = {"path": "triton-again", **triton_load(server.url, MODEL, texts, c, args.seconds)}
                print(json.dumps(after), flush=True)
                # against the mean of the Triton runs before and after it: the machine's load drifts
                front["throughput_ratio"] = round(2 * front["texts_per_s"] / (direct["texts_per_s"]
                                                                              + after["texts_per_s"]), 3)
                result["runs"] += [direct, front, after]
        finally:
            if api is not None:
                api.terminate()
                api.wait(timeout=30)
            server.stop()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

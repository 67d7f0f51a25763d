"""End-to-end runs of `embedforge run` on the BEIR dev collections in ../shared/data (not run in CI).

Scenarios (issue #2 "done when"):
  sample      the bundled sample corpus, defaults                       (< 10 min on 2 CPU cores)
  cran-byo    cranfield, --pairs from qrels/train.tsv, --eval-beir cranfield (test queries)
  cran-sdg    cranfield, offline generator only (no pairs), --eval-beir cranfield
  dbpedia-5k  agentset_dbpedia (5,000 docs), ~1,000 offline pairs, --eval-beir its test queries (< 30 min)

    python bench/dev_collections.py --scenarios sample cran-byo cran-sdg dbpedia-5k --out runs/bench

Prints one JSON line per scenario (stage seconds, counts, base vs fine-tuned metrics) and appends a markdown
table to --report when given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMBEDFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_pairs(beir_dir: Path, split: str, out: Path) -> Path:
    from embedforge.sdg.byo import pairs_from_beir_qrels

    rows = pairs_from_beir_qrels(beir_dir, split=split)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def scenario_args(name: str, work: Path) -> list[str]:
    cran = DATA / "cranfield"
    if name == "sample":
        return []
    if name == "cran-byo":
        pairs = write_pairs(cran, "train", work / "cranfield_train_pairs.jsonl")
        return ["--corpus", str(cran / "corpus.jsonl"), "--pairs", str(pairs), "--eval-beir", str(cran)]
    if name == "cran-sdg":
        return ["--corpus", str(cran / "corpus.jsonl"), "--eval-beir", str(cran)]
    if name == "dbpedia-5k":
        dbp = DATA / "agentset_dbpedia"
        return ["--corpus", str(dbp / "corpus.jsonl"), "--eval-beir", str(dbp), "sdg.max_pairs=1250"]
    raise SystemExit(f"unknown scenario {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["sample", "cran-byo", "cran-sdg", "dbpedia-5k"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every scenario")
    args = ap.parse_args()
    rows = []
    for name in args.scenarios:
        out = args.out / name
        cmd = [sys.executable, "-m", "embedforge.cli", "run", "--out", str(out), *scenario_args(name, args.out), *args.overrides]
        t0 = time.time()
        r = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            print(json.dumps({"scenario": name, "error": r.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        s = json.loads((out / "summary.json").read_text())
        row = {"scenario": name, "wall_s": round(wall, 1), "cmd": " ".join(cmd[2:]),
               "stages": {k: v["seconds"] for k, v in s["stages"].items()}, "counts": s["counts"],
               "base": s["evaluation"]["base"], "finetuned": s["evaluation"]["finetuned"],
               "external": s["evaluation"].get("external"), "promotion": s.get("promotion", {}).get("reason")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.report and rows:
        lines = [f"\n### dev collections — {time.strftime('%Y-%m-%d')} — {platform.node()} ({os.cpu_count()} CPU cores, no GPU)\n",
                 "| scenario | wall s | docs | chunks | pairs train/eval | held-out nDCG@10 base → ft | external nDCG@10 base → ft | external R@10 base → ft |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ext = r["external"]
            en = f"{ext['base']['ndcg@10']:.4f} → {ext['finetuned']['ndcg@10']:.4f}" if ext else "–"
            er = f"{ext['base']['recall@10']:.4f} → {ext['finetuned']['recall@10']:.4f}" if ext else "–"
            c = r["counts"]
            lines.append(f"| {r['scenario']} | {r['wall_s']} | {c.get('documents')} | {c.get('chunks')} | "
                         f"{c['pairs']['train']}/{c['pairs']['eval']} | {r['base']['ndcg@10']:.4f} → {r['finetuned']['ndcg@10']:.4f} | {en} | {er} |")
        lines.append("\nStage seconds: " + "; ".join(f"{r['scenario']}: " + ", ".join(f"{k} {v}" for k, v in r["stages"].items() if v) for r in rows))
        with args.report.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""End-to-end runs of `embedforge run` on the BEIR dev collections in ../shared/data (not run in CI).

Scenarios (issue #2 "done when"; dbpedia-many: issue #13):
  sample        the bundled sample corpus, defaults                       (< 10 min on 2 CPU cores)
  cran-byo      cranfield, --pairs from qrels/train.tsv, --eval-beir cranfield (test queries)
  cran-sdg      cranfield, offline generator only (no pairs), --eval-beir cranfield
  dbpedia-5k    agentset_dbpedia (5,000 docs), ~1,000 offline pairs, --eval-beir its test queries (< 30 min)
  dbpedia-many  agentset_dbpedia re-split by query (seeded hash, half train): graded, many-positive --pairs
                (~22 judged documents per query in two grades), --eval-beir its other half
  debates       built from arguana's structure (issue #36): thousands of queries with ~15 judged documents each —
                each argument's heading is a query; its own argument and the rebuttal to it are grade 2, every other
                argument of the same debate grade 1; debates split 70/30 into train and test (no document of a test
                query's debate is a training positive). ``python bench/dev_collections.py --compare debates ...``

    python bench/dev_collections.py --scenarios sample cran-byo cran-sdg dbpedia-5k --out runs/bench

Prints one JSON line per scenario (stage seconds, counts, base vs fine-tuned metrics) and appends a markdown
table to --report when given.

Comparison (issue #13 targets: never below base; >= the sentence-transformers recipe + 2 points nDCG@10): base /
sentence-transformers recipe (at lr 2e-5 and at the trainer's default 5e-5: neither is best everywhere) /
embedforge (``fixed``: the fixed schedule; ``defaults``: what ``embedforge run --pairs`` does on this machine) on
each dev collection with human pairs, several seeds, mean +- spread (``bench/train_quality.py`` does each run;
the collections without a train split are re-split by query here):

    python bench/dev_collections.py --compare cranfield dbpedia-many arguana --seeds 13,14,15 \
        --variants base,st_lr2e-5,st_lr5e-5,fixed,defaults --out runs/bench_compare
    # the other fold of a re-split collection (its halves swapped: train on the first run's test queries), so that
    # every judged query is a test query once (dbpedia-many's 19 test queries alone resolve little;
    # bench/paired.py over the rows of both folds compares on all of them)
    python bench/dev_collections.py --compare dbpedia-many dbpedia-many-b --seeds 13,14,15 --variants ...
    # reduced CPU run: a 1,500-document slice of dbpedia (every judged document kept), inputs cut to 128 tokens
    python bench/dev_collections.py --compare cranfield dbpedia-many --max-docs 1500 --max-seq-length 128 --seeds 13
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
    from embedforge.stages.sdg.byo import pairs_from_beir_qrels

    rows = pairs_from_beir_qrels(beir_dir, split=split)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _hash_fraction(text: str, seed: int) -> float:
    import hashlib

    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16) / 16**8


def resplit(name: str, work: Path, seed: int = 13, max_docs: int | None = None) -> Path:
    """A BEIR folder with ``qrels/train.tsv`` and ``qrels/test.tsv`` for dev collection ``name``.

    ``cranfield`` keeps its own split. ``dbpedia-many`` (agentset_dbpedia) and ``arguana`` have test judgements
    only: their judged queries are split in half by a seeded hash of the query id; ``dbpedia-many-b`` and
    ``arguana-b`` are the other fold (the halves swapped). ``max_docs`` keeps every document judged relevant and a
    seeded sample of the others (a smaller corpus for CPU runs)."""
    import random

    sources = {"cranfield": "cranfield", "dbpedia-many": "agentset_dbpedia", "arguana": "arguana"}
    source = sources[name.removesuffix("-b")]
    swapped = name.endswith("-b")
    src = DATA / source
    if (src / "qrels" / "train.tsv").is_file() and not max_docs:
        return src
    out = work / (f"{name}-split{seed}" + (f"-{max_docs}" if max_docs else ""))
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = lines[0], [ln.split("\t") for ln in lines[1:] if ln.strip()]
    if (src / "qrels" / "train.tsv").is_file():
        splits = {"train": (src / "qrels" / "train.tsv").read_text().splitlines()[1:],
                  "test": ["\t".join(r) for r in rows]}
    else:
        splits = {"train": [], "test": []}
        for r in rows:
            splits["train" if (_hash_fraction(r[0], seed) < 0.5) != swapped else "test"].append("\t".join(r))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for split, body in splits.items():
        (out / "qrels" / f"{split}.tsv").write_text("\n".join([header, *body]) + "\n")
    (out / "queries.jsonl").write_text((src / "queries.jsonl").read_text())
    docs = (src / "corpus.jsonl").read_text().splitlines()
    if max_docs and len(docs) > max_docs:
        judged = {ln.split("\t")[1] for body in splits.values() for ln in body if float(ln.split("\t")[2]) > 0}
        keep = [d for d in docs if json.loads(d)["_id"] in judged]
        rest = [d for d in docs if json.loads(d)["_id"] not in judged]
        keep += random.Random(seed).sample(rest, max(0, min(len(rest), max_docs - len(keep))))
        docs = keep
    (out / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    return out


def _heading(text: str) -> str | None:
    """An ArguAna point's heading: the text before its first double space, when it reads like one (3-40 words);
    rebuttals (ids ending in ``b``) have none."""
    head = text.split("  ", 1)[0].strip()
    return head if "  " in text and 3 <= len(head.split()) <= 40 else None


def _debate(doc_id: str) -> str:
    """The debate an ArguAna id belongs to: the id without its last ``-<side><n><a|b>`` part."""
    return doc_id.rsplit("-", 1)[0]


def debates(work: Path, seed: int = 13, train_share: float = 0.7) -> Path:
    """A many-positive BEIR folder from arguana's structure: ids are ``<debate>-<side><n><a|b>``, ``a`` a point
    (heading, two spaces, argument) and ``b`` the rebuttal to it. Queries are the points' headings; per query the
    point itself and its rebuttal are grade 2 and every other argument of the debate grade 1, so a query has
    ~15 judged documents, the point among them holding its heading verbatim. Whole debates
    go to train or test (a seeded hash of the debate id; ``train_share`` of them train), so test judgements share no
    debate with training pairs. The corpus is arguana's, unchanged."""
    src = DATA / "arguana"
    out = work / (f"debates-split{seed}" + (f"-train{round(train_share * 100)}" if train_share != 0.7 else ""))
    docs = [json.loads(ln) for ln in (src / "corpus.jsonl").read_text().splitlines() if ln.strip()]
    by_debate: dict[str, list[str]] = {}
    for d in docs:
        by_debate.setdefault(_debate(d["_id"]), []).append(d["_id"])
    queries, splits = [], {"train": [], "test": []}
    for d in docs:
        head = _heading(d["text"]) if d["_id"].endswith("a") else None
        if head is None:
            continue
        debate = _debate(d["_id"])
        rebuttal = d["_id"][:-1] + "b"
        queries.append(json.dumps({"_id": f"q-{d['_id']}", "text": head}))
        split = "train" if _hash_fraction(debate, seed) < train_share else "test"
        for doc in by_debate[debate]:
            grade = 2 if doc in (d["_id"], rebuttal) else 1
            splits[split].append(f"q-{d['_id']}\t{doc}\t{grade}")
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for split, body in splits.items():
        (out / "qrels" / f"{split}.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *body]) + "\n")
    (out / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (out / "corpus.jsonl").write_text((src / "corpus.jsonl").read_text())
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
    if name in ("dbpedia-many", "debates"):
        split = debates(work) if name == "debates" else resplit(name, work)
        pairs = write_pairs(split, "train", work / f"{name}_train_pairs.jsonl")
        return ["--corpus", str(split / "corpus.jsonl"), "--pairs", str(pairs), "--eval-beir", str(split)]
    raise SystemExit(f"unknown scenario {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["sample", "cran-byo", "cran-sdg", "dbpedia-5k"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every scenario")
    ap.add_argument("--compare", nargs="+", default=None, help="collections (cranfield, dbpedia-many, arguana): "
                    "base / ST recipe / embedforge over --seeds instead of the scenarios")
    ap.add_argument("--variants", default="base,st_lr2e-5,st_lr5e-5,fixed,defaults")
    ap.add_argument("--seeds", default="13,14,15")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--max-seq-length", type=int, default=None)
    args = ap.parse_args()
    if args.compare:
        compare(args)
        return
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


def compare(args: argparse.Namespace) -> None:
    """Every variant on every collection over the seeds (``train_quality.main``), then mean +- spread per variant."""
    import statistics

    sys.path.insert(0, str(REPO / "bench"))
    import train_quality

    table = []
    for name in args.compare:
        folder = debates(args.out) if name == "debates" else resplit(name, args.out, max_docs=args.max_docs)
        rows_file = args.out / f"{name}.jsonl"
        rows_file.unlink(missing_ok=True)
        argv = ["--data", str(folder), "--out", str(args.out / name), "--variants", args.variants, "--seeds", args.seeds,
                "--json", str(rows_file)] + (["--exclude-self"] if name.startswith("arguana") else [])
        argv += ["--max-seq-length", str(args.max_seq_length)] if args.max_seq_length else []
        train_quality.main(argv)
        results = [json.loads(ln) for ln in rows_file.read_text().splitlines()]
        for variant in args.variants.split(","):
            vals = [r["ndcg@10"] for r in results if r["variant"] == variant]
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            table.append({"collection": name, "variant": variant, "seeds": len(vals),
                          "ndcg@10": round(statistics.mean(vals), 4), "std": round(spread, 4), "values": vals})
    print("\ncollection     variant          seeds  nDCG@10 mean +- std")
    for r in table:
        print(f"{r['collection']:<14} {r['variant']:<16} {r['seeds']:>5}  {r['ndcg@10']:.4f} +- {r['std']:.4f}")
    if args.report:
        lines = [f"\n### dev collections, base / ST recipe / embedforge — {time.strftime('%Y-%m-%d')} — "
                 f"{platform.node()} ({os.cpu_count()} CPU cores)\n", "| collection | variant | seeds | nDCG@10 mean ± std |",
                 "|---|---|---|---|"] + [f"| {r['collection']} | {r['variant']} | {r['seeds']} | {r['ndcg@10']:.4f} ± {r['std']:.4f} |"
                                          for r in table]
        with args.report.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

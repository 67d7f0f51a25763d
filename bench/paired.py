"""Paired comparison of two variants over a collection's test queries: is a difference in nDCG@10 resolvable?

The seed spread in ``docs/benchmarks.md`` measures only training noise. A test set of a few dozen queries adds its
own: a variant can lead by two points on 19 queries by the luck of which queries were drawn. This takes the rows
``bench/train_quality.py`` writes (one JSON line per variant and seed, each with ``per_query`` nDCG@10), averages
each test query over the seeds of each variant, and reports for B − A over the queries: the mean difference, a 95 %
bootstrap confidence interval (queries resampled; ``embedforge.retrieval.stats.paired_bootstrap``, the one the run
report and ``train.schedule=auto`` use) and a two-sided paired permutation p-value (scipy.stats.permutation_test,
signs of the per-query differences flipped).

    python bench/paired.py docs/data/dev_collections_h200_2026-12-02_s13_dbpedia-many.jsonl --a st_lr2e-5 --b defaults

A variant name may be followed by ``@TEXT``: only the rows of files whose name contains TEXT (a variant whose
meaning changed between sweeps, e.g. ``defaults`` before and after sweep 24):

    python bench/paired.py docs/data/dev_collections_h200_*_cranfield.jsonl --a defaults@_s24_ --b defaults@_s26_
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from embedforge.retrieval.stats import paired_bootstrap  # noqa: E402


def per_query_means(rows: list[dict], variant: str) -> dict[str, float]:
    """Each test query's nDCG@10 averaged over the variant's seeds (``NAME@TEXT``: rows of files whose name contains
    TEXT only; rows read by :func:`main` carry their file name as ``_file``)."""
    name, _, source = variant.partition("@")
    by_query: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["variant"] == name and source in r.get("_file", ""):
            for q, v in r["per_query"].items():
                by_query[q].append(v)
    if not by_query:
        raise SystemExit(f"no rows with per-query scores for variant {variant!r}")
    return {q: statistics.mean(v) for q, v in by_query.items()}


def compare(rows: list[dict], a: str, b: str, resamples: int = 10000, seed: int = 0) -> dict:
    """B − A over the queries both variants scored: mean, 95 % bootstrap interval, paired permutation p-value, and
    ``mde80``: the smallest true difference these queries would resolve (interval above 0) four times in five —
    (1.96 + 0.84) x the standard error of the mean difference (normal approximation). A target such as "+2 points"
    that is below ``mde80`` cannot be shown on this test set, whatever the trainers do."""
    from scipy import stats

    qa, qb = per_query_means(rows, a), per_query_means(rows, b)
    queries = sorted(set(qa) & set(qb))
    a_scores, b_scores = [qa[q] for q in queries], [qb[q] for q in queries]
    diff = np.subtract(b_scores, a_scores)
    ci = paired_bootstrap(a_scores, b_scores, n_resamples=resamples, seed=seed)
    perm = stats.permutation_test((diff,), np.mean, permutation_type="samples", n_resamples=resamples,
                                  alternative="two-sided", random_state=np.random.default_rng(seed))
    return {"a": a, "b": b, "queries": len(queries), "mean_a": round(float(np.mean(a_scores)), 4),
            "mean_b": round(float(np.mean(b_scores)), 4), "diff": round(ci.mean, 4),
            "ci95": [round(ci.low, 4), round(ci.high, 4)],
            "p": round(float(perm.pvalue), 4),
            "mde80": round(2.8 * float(np.std(diff, ddof=1)) / np.sqrt(len(diff)), 4),
            "b_better": int((diff > 0).sum()), "b_worse": int((diff < 0).sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, nargs="+", help="JSON-lines files of bench/train_quality.py rows")
    ap.add_argument("--a", default="st_lr2e-5", help="reference variant")
    ap.add_argument("--b", default="defaults", help="variant compared with it")
    args = ap.parse_args(argv)
    rows = [{**json.loads(ln), "_file": f.name} for f in args.rows for ln in f.read_text().splitlines() if ln.strip()]
    print(json.dumps(compare(rows, args.a, args.b)))


if __name__ == "__main__":
    main()

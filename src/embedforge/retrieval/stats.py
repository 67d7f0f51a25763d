"""Statistics of the run report: paired bootstrap confidence intervals and per-query wins/losses of the
fine-tuned model over the base model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedforge.contracts import QueryEvaluation

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
#: Per-query differences within this distance of 0 are ties (metrics are rounded to 5 decimals).
TIE = 1e-6


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Interval:
    """Mean per-query difference (fine-tuned minus base) and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float


def paired_bootstrap(base: Sequence[float], finetuned: Sequence[float], n_resamples: int = BOOTSTRAP_RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Percentile confidence interval of the mean per-query difference ``finetuned - base``.

    Args:
        base: Per-query scores of the base model.
        finetuned: Per-query scores of the fine-tuned model, aligned with ``base``.
        n_resamples: Bootstrap resamples of the queries.
        confidence: Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: Seed of the resampling, so a report is reproducible.

    Raises:
        ValueError: Empty or misaligned inputs.
    """
    diff = np.asarray(finetuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError(f"need two aligned, non-empty 1-d score lists (got shape {diff.shape})")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 4_000_000 // diff.size)  # bounded memory: at most ~4M indices at a time
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(diff.mean()), float(low), float(high))


@dataclass(frozen=True)
class Comparison:
    """One metric over a set of queries: both means, the interval of the gain, and wins/ties/losses."""

    metric: str
    n: int
    base: float
    finetuned: float
    interval: Interval | None
    wins: int
    ties: int
    losses: int


def compare(records: Sequence[QueryEvaluation], metric: str) -> Comparison:
    """Base vs fine-tuned ``metric`` over ``records`` (no interval for fewer than two queries)."""
    b = np.array([r.base[metric] for r in records], dtype=np.float64)
    f = np.array([r.finetuned[metric] for r in records], dtype=np.float64)
    d = f - b
    return Comparison(
        metric=metric, n=len(records), base=float(b.mean()) if len(b) else 0.0,
        finetuned=float(f.mean()) if len(f) else 0.0,
        interval=paired_bootstrap(b, f) if len(records) >= 2 else None,
        wins=int((d > TIE).sum()), ties=int((np.abs(d) <= TIE).sum()), losses=int((d < -TIE).sum()),
    )



"""Replay ``train.schedule=auto``'s choice from recorded probes, under the shipped rule and a max-T alternative.

``bench/dev_collections.py`` rows of an auto run carry every probe's per-query held-out scores (``trials``). This
re-runs the product's own choice (:func:`embedforge.stages.train.schedule._pick`: the best (probe, checkpoint) must beat
the fixed settings' probe with a Bonferroni-corrected paired bootstrap interval above 0) and, beside it, a max-T
bootstrap: one resampling of the held-out queries shared by every (probe, checkpoint), the studentized maximum of
their gains giving simultaneous lower bounds — exact where Bonferroni is conservative (checkpoints of one probe are
strongly correlated). It answers, without a GPU, whether the multiple-comparison correction is what keeps a
collection's search from a gain.

    python bench/replay_choice.py docs/data/dev_collections_h200_2026-12-05_s26_*.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from embedforge.config import TrainConfig
from embedforge.contracts import ScheduleChoice, ScheduleTrial
from embedforge.stages.train.schedule import _pick, _reference


def max_t_lower(ref: np.ndarray, others: list[np.ndarray], confidence: float, seed: int, n_resamples: int = 4000
                ) -> np.ndarray:
    """Simultaneous lower bounds (one-sided at (1 - confidence) / 2, as the shipped two-sided interval's lower end)
    of each ``others[j] - ref`` mean gain, from the studentized max-T bootstrap over the queries."""
    gains = np.stack([o - ref for o in others])  # candidates x queries
    mean = gains.mean(axis=1)
    idx = np.random.default_rng(seed).integers(0, gains.shape[1], size=(n_resamples, gains.shape[1]))
    boot = np.stack([gains[:, i].mean(axis=1) for i in idx])  # resamples x candidates
    se = boot.std(axis=0) + 1e-12
    q = np.quantile(((boot - mean) / se).max(axis=1), 1 - (1 - confidence) / 2)
    return mean - q * se


def recorded(row: dict) -> tuple[TrainConfig, list[ScheduleTrial], list[float], float]:
    """What ``_pick`` was given in a recorded auto run: the run's settings (the shipped defaults, its seed), the
    probes with their per-query scores, the base model's held-out score (per query only its mean is recorded: all
    ``_pick`` uses) and the probes' length (their last checkpoint)."""
    trials = [ScheduleTrial(**t) for t in row["trials"]]
    base = float(row.get("base_score") or re.search(r"(?:base|vs) (\d\.\d+)\)", row["schedule"]).group(1))
    n = len(next(iter(trials[0].per_query.values())))
    probe_epochs = max(float(k) for t in trials for k in t.scores)
    return TrainConfig(seed=row["seed"], schedule={"mode": "auto"}), trials, [base] * n, probe_epochs


def shipped_choice(row: dict) -> ScheduleChoice:
    """The product's own choice (``_pick``) replayed on a recorded auto run."""
    return _pick(*recorded(row))


def replay(row: dict) -> dict:
    """The shipped choice and the max-T one for one recorded auto run."""
    cfg, trials, base, _ = recorded(row)
    shipped = shipped_choice(row)
    _, ref, ref_key = _reference(cfg, trials, base)
    cands = [(i, k) for i, t in enumerate(trials) for k in t.per_query if (i, k) != ref_key]
    low = max_t_lower(np.asarray(ref), [np.asarray(trials[i].per_query[k]) for i, k in cands],
                      cfg.schedule.confidence, cfg.seed)
    best = max(range(len(cands)), key=lambda j: trials[cands[j][0]].scores[cands[j][1]])
    i, k = cands[best]
    gain = trials[i].scores[k] - float(np.mean(ref))
    max_t_takes = gain > 0 and low[best] > 0 and trials[i].scores[k] > base[0]
    fixed = (cfg.learning_rate, cfg.temperature, cfg.epochs, False)
    took = (shipped.learning_rate, shipped.temperature, shipped.epochs, shipped.augment) != fixed
    return {"seed": row["seed"], "ndcg@10": row["ndcg@10"], "shipped": "best" if took else "fixed",
            "best": f"lr {trials[i].learning_rate:.2e}{' +aug' if trials[i].augment else ''} @ {k} ep",
            "gain": round(100 * gain, 2), "max_t_low": round(100 * float(low[best]), 2),
            "max_t": "best" if max_t_takes else "fixed"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.rows:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("trials"):
                print(path.stem.rsplit("_", 1)[-1], json.dumps(replay(row)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

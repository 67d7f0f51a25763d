"""Many positives per query: which of a query's positives train in each epoch, and what it never treats as negative.

Mining writes one row per trained positive of a query (every grade by default), however many there are.
Training every row every epoch would let a query with 90 judged documents weigh 90x a query with one, and a fixed
"first n" cap would train on the same n positives forever. So each epoch every query contributes at most ``cap`` of
its rows (:func:`epoch_rows`):

* the rows of a query are shuffled once (seeded) into a cycle, and epoch ``e`` takes the next ``cap`` rows of that
  cycle: over ``ceil(n / cap)`` epochs every positive is trained on, none twice before all were seen;
* ``cap`` = ``train.positives_per_query`` (default 8, so a query with a handful of judged documents trains on
  all of them every epoch: collections of few positives are untouched). Why a per-query cap and not a global row budget:
  the step count of an epoch then grows with the number of queries, not with how densely they were judged,
  and the contrastive objective (one target among the batch) stays balanced over queries.

Steps per epoch: about ``sum over queries of min(positives, cap) / batch_size`` (the no-duplicates sampler
defers a row whose anchor is already in the batch, so a query's rows spread over batches; the last few batches of
an epoch can be short). E.g. 2,600 queries with dozens of positives each: 20,800 rows, 650 steps of 32 per epoch,
and three epochs train up to 24 different positives of each query instead of the same first 10 three times.
"""

from __future__ import annotations

import numpy as np

from embedforge.contracts import TrainExample


def rows_by_anchor(examples: list[TrainExample]) -> dict[str, list[int]]:
    """Anchor text -> indices of its rows, in file order."""
    out: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        out.setdefault(ex.anchor, []).append(i)
    return out


def epoch_rows(examples: list[TrainExample], cap: int | None, seed: int, epoch: int) -> list[int]:
    """The rows trained in ``epoch``: per anchor at most ``cap`` rows, taken as the ``epoch``-th window of a seeded
    per-anchor cycle (see the module docstring). ``cap`` None or 0: every row. Sorted row indices."""
    groups = rows_by_anchor(examples)
    if not cap or all(len(rows) <= cap for rows in groups.values()):
        return list(range(len(examples)))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for rows in groups.values():
        cycle = rng.permutation(rows).tolist()  # drawn for every anchor, so the draw does not depend on `epoch`
        if len(cycle) <= cap:
            chosen.extend(cycle)
            continue
        start = (epoch * cap) % len(cycle)
        chosen.extend((cycle + cycle)[start:start + cap])
    return sorted(chosen)

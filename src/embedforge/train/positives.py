"""Many positives per query: which of a query's positives train in each epoch, and what it never treats as negative.

Mining writes one row per trained positive of a query (every grade by default), however many there are.
Training every row every epoch would let a query with 90 judged documents weigh 90x a query with one, and a fixed
"first n" cap would train on the same n positives forever. So each epoch every query contributes at most ``cap`` of
its rows (:func:`epoch_rows`):

* the rows of a query are shuffled once (seeded) into a cycle, and epoch ``e`` takes the next ``cap`` rows of that
  cycle: over ``ceil(n / cap)`` epochs every positive is trained on, none twice before all were seen;
* ``cap`` = ``train.positives_per_query`` (default 8, about the mean number of judged documents per query of
  Cranfield, so collections of few positives are untouched). Why a per-query cap and not a global row budget:
  the step count of an epoch then grows with the number of queries, not with how densely they were judged,
  and the contrastive objective (one target among the batch) stays balanced over queries.

Steps per epoch: about ``sum over queries of min(positives, cap) / batch_size`` (the no-duplicates sampler
defers a row whose anchor is already in the batch, so a query's rows spread over batches; the last few batches of
an epoch can be short). E.g. 2,600 queries with dozens of positives each: 20,800 rows, 650 steps of 32 per epoch,
and three epochs train up to 24 different positives of each query instead of the same first 10 three times.

False-negative masking (:func:`known_positives`): every text mining found positive for a query — its rows'
positives, the chunks of its positive documents and, under ``mine.train_grades=top``, the lower-graded positives
that are not trained on (``known_positives.jsonl``, written by mine) — is never a negative of that query in a
batch. Such lower grades are thus neither positive (no row) nor negative (masked in-batch, and mine never picks
them as hard negatives). A training-time rewrite of a chunk (an inverse-cloze positive with its sentence cut out,
a document with its title stripped: ``Pair.positive_text``) counts as positive for every query that has that chunk
among its positives or its positive documents (:func:`add_rewrites`): a near-copy of a relevant chunk must not be
pushed away because its text differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from embedforge import contracts
from embedforge.contracts import TrainExample

KNOWN_POSITIVES_FILE = "known_positives.jsonl"


def add_rewrites(texts: dict[str, set[str]], excluded: dict[str, set[int]], rewrites: Mapping[int, set[str]]) -> None:
    """In place: each query's known positive ``texts`` gain the rewrites (chunk row -> training-time texts) of the
    chunk rows that are never its negatives (``excluded``: its positive documents' chunks)."""
    for query, rows in excluded.items():
        texts.setdefault(query, set()).update(t for r in rows & rewrites.keys() for t in rewrites[r])


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


def write_known_positives(out_dir: str | Path, texts: Mapping[str, set[str]]) -> int:
    """Write ``known_positives.jsonl`` (``{"anchor", "texts"}`` per query: every text that is not its negative);
    returns the number of lines."""
    rows = ({"anchor": a, "texts": sorted(t)} for a, t in sorted(texts.items()))
    return contracts.write_jsonl(Path(out_dir) / KNOWN_POSITIVES_FILE, rows)


def positives_by_anchor(examples: list[TrainExample]) -> dict[str, set[str]]:
    """Anchor text -> the positive texts of all its rows (what the in-batch mask keeps out of its negatives)."""
    known: dict[str, set[str]] = {}
    for ex in examples:
        known.setdefault(ex.anchor, set()).add(ex.positive)
    return known


def known_positives(mined_dir: str | Path, examples: list[TrainExample]) -> dict[str, set[str]]:
    """Anchor text -> every text never treated as its negative in a batch: the positives of all its rows
    (:func:`positives_by_anchor`) plus, when the mine folder has ``known_positives.jsonl``, every text mining found
    positive for it (all grades)."""
    known = positives_by_anchor(examples)
    path = Path(mined_dir) / KNOWN_POSITIVES_FILE
    if path.is_file():
        for _, row in contracts.iter_jsonl(path):
            known.setdefault(row["anchor"], set()).update(row["texts"])
    return known

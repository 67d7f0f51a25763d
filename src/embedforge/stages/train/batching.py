"""Which rows train together, and how a step's rows become texts in loss order.

* :func:`no_duplicate_batches` / :func:`plan_steps`: the batch sampler — no text twice among a batch's anchors and
  positives (sentence-transformers' ``NoDuplicatesBatchSampler``), shuffled per epoch from the seed, no near-empty
  tail batches, over the rows of the epoch (at most ``positives_per_query`` per query,
  :func:`embedforge.stages.train.positives.epoch_rows`);
* :func:`collate`: the collator — a batch's anchors, positives and flat hard negatives (:class:`Batch`) and its
  false-negative mask (:func:`embedforge.stages.train.losses.false_negative_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedforge import contracts
from embedforge.contracts import TrainExample
from embedforge.errors import InputError
from embedforge.stages.train.positives import epoch_rows

if TYPE_CHECKING:
    import torch


def read_examples(mined_dir: str | Path) -> list[TrainExample]:
    """The training rows of a mine artifact folder (``train.jsonl``).

    Raises:
        InputError: ``train.jsonl`` is missing or has fewer than 2 rows (a contrastive batch needs two).
    """
    examples = contracts.read_train_examples(mined_dir)
    if len(examples) < 2:
        raise InputError(
            f"{Path(mined_dir) / contracts.TRAIN_FILE} has {len(examples)} training rows; contrastive training needs "
            "at least 2 (add documents or pairs upstream)"
        )
    return examples


def no_duplicate_batches(examples: list[TrainExample], batch_size: int, seed: int,
                         rows: list[int] | None = None, min_fill: float = 0.5) -> list[list[int]]:
    """One epoch of batches (row indices) in which no text appears twice among the anchors and positives.

    Rows are visited in a seeded random order; a row whose anchor or positive is already in the batch being
    filled waits for a later batch (the algorithm of sentence-transformers' ``NoDuplicatesBatchSampler``).

    The tail of an epoch whose rows belong to a few anchors (one query with 60 judged documents among queries with
    a handful) would otherwise come as many batches of one or two rows: steps with almost no in-batch negatives
    that still take a full learning-rate step each. So once a batch is held below ``min_fill`` x the fullest batch
    the epoch's anchors allow (``min(batch_size, distinct anchors)``) *by duplicates* — rows were waiting, not
    missing — the epoch ends there and those rows are not trained this epoch (sentence-transformers' trainer
    likewise stops an epoch after ``ceil(rows / batch_size)`` batches). Otherwise every row appears exactly once; the last batch may be smaller.

    Args:
        examples: Training rows.
        batch_size: Rows per batch.
        seed: Shuffle seed (use ``seed + epoch`` for a different order each epoch).
        rows: The rows of this epoch (default: all).
        min_fill: Fraction of the fullest possible batch under which a duplicate-limited batch ends the epoch
            (0: never; every row is trained).

    Returns:
        A list of batches, each a list of row indices.
    """
    rows = list(range(len(examples))) if rows is None else rows
    fullest = min(batch_size, len({examples[i].anchor for i in rows}))
    remaining = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows)).tolist()]
    batches: list[list[int]] = []
    while remaining:
        batch: list[int] = []
        seen: set[str] = set()
        skipped: list[int] = []
        pos = 0
        while pos < len(remaining) and len(batch) < batch_size:
            i = remaining[pos]
            pos += 1
            ex = examples[i]
            if ex.anchor in seen or ex.positive in seen:
                skipped.append(i)  # waits, in order, for a later batch
                continue
            batch.append(i)
            seen.update((ex.anchor, ex.positive))
        if batches and skipped and len(batch) < min_fill * fullest:
            break  # the rest of the epoch is a few anchors' rows: no more near-empty steps
        batches.append(batch)
        remaining = skipped + remaining[pos:]
    return batches


def plan_steps(examples: list[TrainExample], batch_size: int, epochs: float, seed: int,
               positives_per_query: int | None = None) -> list[list[int]]:
    """All batches of the run: whole epochs of :func:`no_duplicate_batches` (epoch ``e`` shuffled with
    ``seed + e`` over :func:`~embedforge.stages.train.positives.epoch_rows`: at most ``positives_per_query`` rows per
    query, a different window of its positives each epoch), cut after ``round(epochs x batches per epoch)`` steps,
    so fractional epochs work."""
    first = epoch_batches(examples, batch_size, seed, positives_per_query, 0)
    total = max(1, round(epochs * len(first)))
    plan = list(first)
    epoch = 1
    while len(plan) < total:
        plan.extend(epoch_batches(examples, batch_size, seed, positives_per_query, epoch))
        epoch += 1
    return plan[:total]


def epoch_batches(examples: list[TrainExample], batch_size: int, seed: int, positives_per_query: int | None,
                  epoch: int) -> list[list[int]]:
    """The batches of epoch ``epoch`` (0-based) of :func:`plan_steps`."""
    rows = epoch_rows(examples, positives_per_query, seed, epoch)
    return no_duplicate_batches(examples, batch_size, seed + epoch, rows)


@dataclass
class Batch:
    """Texts of one step, in loss order, the false-negative mask ``(B, B + N)`` (None: texts only, e.g. one
    rank's share of a distributed batch, whose loss uses the global batch's mask) and each row's relevance grade."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]
    mask: torch.Tensor | None
    grades: list[int] | None = None

    def weights(self, power: float) -> torch.Tensor | None:
        """Each row's loss weight ``grade ** power`` (train.grade_power); None when every row weighs the same."""
        if not power or not self.grades or len(set(self.grades)) == 1:
            return None
        import torch

        return torch.tensor(self.grades, dtype=torch.float32) ** power

    @property
    def candidates(self) -> list[str]:
        return self.positives + self.negatives


def collate(examples: list[TrainExample], rows: list[int], known_positives: dict[str, set[str]] | None) -> Batch:
    """Gather a batch: flat hard negatives (rows may have different numbers) and its false-negative mask.

    Args:
        examples: All training rows.
        rows: Indices of this batch's rows.
        known_positives: anchor text -> every text that is not that anchor's negative
            (:func:`embedforge.stages.train.positives.known_positives`); None: no mask (the texts are all that is needed).
    """
    from embedforge.stages.train.losses import false_negative_mask

    anchors = [examples[i].anchor for i in rows]
    positives = [examples[i].positive for i in rows]
    negatives = [n for i in rows for n in examples[i].negatives]
    mask = None
    if known_positives is not None:
        mask = false_negative_mask(positives, positives + negatives, [known_positives.get(a, set()) for a in anchors])
    return Batch(anchors=anchors, positives=positives, negatives=negatives, mask=mask,
                 grades=[examples[i].grade for i in rows])

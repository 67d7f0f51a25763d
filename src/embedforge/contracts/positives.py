"""Known positives: every text mining found positive for a query, handed from mine to train.

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

from embedforge.contracts.files import iter_jsonl, write_jsonl
from embedforge.contracts.records import TrainExample

#: Written by mine beside ``train.jsonl``; read by train for its in-batch mask.
KNOWN_POSITIVES_FILE = "known_positives.jsonl"


def add_rewrites(texts: dict[str, set[str]], excluded: dict[str, set[int]], rewrites: Mapping[int, set[str]]) -> None:
    """In place: each query's known positive ``texts`` gain the rewrites (chunk row -> training-time texts) of the
    chunk rows that are never its negatives (``excluded``: its positive documents' chunks)."""
    for query, rows in excluded.items():
        texts.setdefault(query, set()).update(t for r in rows & rewrites.keys() for t in rewrites[r])


def write_known_positives(out_dir: str | Path, texts: Mapping[str, set[str]]) -> int:
    """Write ``known_positives.jsonl`` (``{"anchor", "texts"}`` per query: every text that is not its negative);
    returns the number of lines."""
    rows = ({"anchor": a, "texts": sorted(t)} for a, t in sorted(texts.items()))
    return write_jsonl(Path(out_dir) / KNOWN_POSITIVES_FILE, rows)


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
        for _, row in iter_jsonl(path):
            known.setdefault(row["anchor"], set()).update(row["texts"])
    return known

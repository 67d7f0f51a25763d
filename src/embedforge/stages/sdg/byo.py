"""Bring-your-own pairs: read a user's JSONL of queries and positives and resolve them against the chunks.

One JSON object a line::

    {"query": "how do I ...", "positive_ids": ["guide/install.md", "faq.md"]}          # document ids
    {"query": "what is ...", "positives": ["a passage copied from a document"], "negatives": ["..."], "query_id": "q7"}
    {"query": "why ...", "positive_ids": ["d1", "d2"], "relevance": {"d1": 2, "d2": 1}}   # graded (d2: grade 1)

* ``positive_ids`` are DOCUMENT ids (the ``doc_id`` ingest gave them: BEIR ``_id`` or the file path relative to
  the corpus folder) -> ``relevance="document"``.
* ``positives`` are texts, resolved in this order: equal (whitespace-normalised) to a chunk -> that chunk
  (``relevance="chunk"``); equal to a whole document -> that document; contained in a chunk -> the first such
  chunk in corpus order; contained in a document (e.g. across a chunk boundary) -> that document. Substring
  matching needs at least :data:`MIN_SUBSTRING_CHARS` characters. When any positive of a pair resolves to a
  document, the pair is document-level (its chunk positives contribute their documents).
* ``relevance`` (optional): graded judgements ``{"<positive as written>": grade}``, integers >= 1 (BEIR qrels:
  1 relevant, 2 highly relevant); a positive not listed has grade 1. Kept on the pair as
  ``Pair.positive_grades``. The rule: evaluation scores with every grade (nDCG is graded); training uses every
  grade > 0 as an equal positive (``mine.train_grades=all``, the default; ``train.grade_power`` weighs rows by
  grade instead), or with ``mine.train_grades=top`` only the top grade present for the query, the lower-graded
  positives then neither positives nor negatives (mining never picks a chunk of their documents; see
  :mod:`embedforge.stages.mine`).
* Lines whose queries are the same text (:func:`~embedforge.retrieval.text.query_key`: case and whitespace ignored) are
  merged into one pair before the split: positives unioned, the highest grade kept per positive, negatives
  unioned minus any that became a positive; the first line's ``query_id`` and text are kept, the others are
  listed in ``meta.merged_lines`` / ``meta.merged_query_ids``; a warning is logged and the count is the sdg
  stage's ``duplicate_queries_merged``. A merged pair with positives in both splits follows the split rule below.
* Positives that do not resolve (unknown ids, texts not found) are kept in ``meta.unresolved`` and the pair is
  kept, so the validate stage fails naming the rows.
* Split (``SdgConfig.byo_split``): ``majority`` (default) — a pair whose positive documents lie in both splits goes
  to the split holding most of them (ties: train) and keeps only that split's positives (the others are listed in
  ``meta.dropped_<split>_positives``), so no document crosses splits and no query is duplicated; ``any_eval`` — a
  pair belongs to ``eval`` when any of its positive documents is an eval document, else ``train``;
  ``train_positives`` — a pair with at least one train-document
  positive is a ``train`` pair keeping only those positives (the eval ones are listed in
  ``meta.dropped_eval_positives``), the others are ``eval`` pairs. Both never put an eval document into a train
  pair; ``train_positives`` keeps far more training pairs when queries have many positives (BEIR qrels).

Malformed lines raise :class:`~embedforge.errors.InputError` ``FILE:LINE: ...``.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedforge.contracts import Chunk, Pair, iter_jsonl, iter_text_lines, write_jsonl
from embedforge.errors import InputError
from embedforge.retrieval.text import normalize_ws, query_key

log = logging.getLogger(__name__)

SOURCE_BYO = "byo"
MIN_SUBSTRING_CHARS = 20
ALLOWED_KEYS = {"query", "query_id", "positive_ids", "positives", "negatives", "relevance"}


class CorpusIndex:
    """Lookup of chunk/document texts and ids for resolving user positives.

    Args:
        chunks: All chunks (both splits), in corpus order.
    """

    def __init__(self, chunks: list[Chunk]):
        self.chunks = chunks
        self.chunk_by_id = {c.chunk_id: c for c in chunks}
        self.doc_split: dict[str, str] = {}
        by_doc: OrderedDict[str, list[Chunk]] = OrderedDict()
        for c in chunks:
            self.doc_split.setdefault(c.doc_id, c.split)
            by_doc.setdefault(c.doc_id, []).append(c)
        self.chunk_by_text: dict[str, str] = {}
        for c in chunks:
            self.chunk_by_text.setdefault(normalize_ws(c.text), c.chunk_id)
        self.doc_ids = list(by_doc)
        doc_texts = [normalize_ws(" ".join(c.text for c in sorted(cs, key=lambda c: c.position))) for cs in by_doc.values()]
        self.doc_by_text: dict[str, str] = {}
        for d, t in zip(self.doc_ids, doc_texts):
            self.doc_by_text.setdefault(t, d)
        self._chunk_blob, self._chunk_starts = self._blob([normalize_ws(c.text) for c in chunks])
        self._doc_blob, self._doc_starts = self._blob(doc_texts)

    @staticmethod
    def _blob(texts: list[str]) -> tuple[str, list[int]]:
        starts, pos = [], 0
        for t in texts:
            starts.append(pos)
            pos += len(t) + 1
        return "\x00".join(texts), starts

    @staticmethod
    def _find(blob: str, starts: list[int], needle: str) -> int | None:
        at = blob.find(needle)
        return None if at < 0 else bisect.bisect_right(starts, at) - 1

    def resolve_text(self, text: str) -> tuple[str, str, str] | None:
        """``(level, id, method)`` for a positive text, or None.

        Args:
            text: A positive passage as the user wrote it.

        Returns:
            level "chunk"|"document", the chunk or document id, and the method (exact_chunk, exact_document,
            substring_chunk, substring_document).
        """
        key = normalize_ws(text)
        if not key:
            return None
        if key in self.chunk_by_text:
            return "chunk", self.chunk_by_text[key], "exact_chunk"
        if key in self.doc_by_text:
            return "document", self.doc_by_text[key], "exact_document"
        if len(key) < MIN_SUBSTRING_CHARS or "\x00" in key:
            return None
        i = self._find(self._chunk_blob, self._chunk_starts, key)
        if i is not None:
            return "chunk", self.chunks[i].chunk_id, "substring_chunk"
        i = self._find(self._doc_blob, self._doc_starts, key)
        if i is not None:
            return "document", self.doc_ids[i], "substring_document"
        return None


def _str_list(value: Any, field: str, where: str, allow_int: bool = False) -> list[str]:
    ok_types = (str, int) if allow_int else (str,)
    if not isinstance(value, list) or not all(isinstance(v, ok_types) and not isinstance(v, bool) for v in value):
        kind = "strings or integers" if allow_int else "strings"
        raise InputError(f"{where}: \"{field}\" must be a list of {kind}, got {value!r:.80}")
    return [str(v) for v in value]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _grades(value: Any, written: list[str], where: str) -> dict[str, int]:
    """The ``relevance`` object of a line: positive (as written) -> integer grade >= 1."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: \"relevance\" must be an object {{positive: grade}}, got {value!r:.80}")
    unknown = [k for k in value if k not in set(written)]
    if unknown:
        raise InputError(f"{where}: \"relevance\" names {unknown[:3]!r:.120}, which are not among this line's positives")
    bad = {k: v for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise InputError(f"{where}: \"relevance\" grades must be integers >= 1 (drop positives judged 0), got {bad!r:.120}")
    return dict(value)


@dataclass
class _Row:
    """One line of the pairs file, its positives resolved (or several lines with one query text, merged)."""

    lines: list[int]
    query_ids: list[str]
    query: str
    chunk_ids: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    grades: dict[str, int] = field(default_factory=dict)  # chunk and document ids -> grade (1 when not given)
    doc_level: bool = False
    texts: list[str] = field(default_factory=list)  # positives written as texts
    negatives: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def add(self, rid: str, grade: int, chunk: bool = False) -> None:
        (self.chunk_ids if chunk else self.doc_ids).append(rid)
        self.grades[rid] = max(grade, self.grades.get(rid, 0))


def _parse(obj: dict[str, Any], n: int, where: str, index: CorpusIndex) -> _Row:
    """Check one line's keys and types and resolve its positives against the corpus."""
    unknown = sorted(set(obj) - ALLOWED_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(ALLOWED_KEYS)}")
    query = obj.get("query")
    if not isinstance(query, str):
        raise InputError(f"{where}: \"query\" must be a string, got {'nothing' if query is None else type(query).__name__}")
    has_ids, has_texts = "positive_ids" in obj, "positives" in obj
    if has_ids == has_texts:
        raise InputError(f"{where}: give exactly one of \"positive_ids\" (document ids) or \"positives\" (texts), "
                         f"got {'both' if has_ids else 'neither'}")
    qid = obj.get("query_id", f"byo:{n}")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
        raise InputError(f"{where}: \"query_id\" must be a non-empty string or integer")
    row = _Row(lines=[n], query_ids=[str(qid)], query=query,
               negatives=_str_list(obj.get("negatives", []), "negatives", where))
    if has_ids:
        row.doc_level = True
        written = _str_list(obj["positive_ids"], "positive_ids", where, allow_int=True)
        grades = _grades(obj.get("relevance"), written, where)
        for d in written:
            if d in index.doc_split:
                row.add(d, grades.get(d, 1))
                row.methods.append("document_id")
            else:
                row.unresolved.append(d)
        return row
    written = _str_list(obj["positives"], "positives", where)
    grades = _grades(obj.get("relevance"), written, where)
    row.texts = written
    for text in written:
        hit = index.resolve_text(text)
        if hit is None:
            row.unresolved.append(text)
            continue
        level, rid, method = hit
        row.methods.append(method)
        if level == "chunk":
            row.add(rid, grades.get(text, 1), chunk=True)
            row.add(index.chunk_by_id[rid].doc_id, grades.get(text, 1))
        else:
            row.doc_level = True
            row.add(rid, grades.get(text, 1))
    return row


def _merge(rows: list[_Row], index: CorpusIndex) -> _Row:
    """Lines with one query text (:func:`~embedforge.retrieval.text.query_key`) as one pair: positives unioned, the highest
    grade kept per positive, negatives unioned minus those that are a positive of any of the lines."""
    out = _Row(lines=[], query_ids=[], query=rows[0].query)
    for r in rows:
        out.lines += r.lines
        out.query_ids += r.query_ids
        out.doc_level |= r.doc_level
        for attr in ("chunk_ids", "doc_ids", "texts", "negatives", "methods", "unresolved"):
            getattr(out, attr).extend(getattr(r, attr))
        for rid, g in r.grades.items():
            out.grades[rid] = max(g, out.grades.get(rid, 0))
    positive_ids = set(out.chunk_ids) | set(out.doc_ids)
    positive_texts = {normalize_ws(t) for t in out.texts}

    def is_positive(neg: str) -> bool:
        hit = index.resolve_text(neg)
        return normalize_ws(neg) in positive_texts or (hit is not None and hit[1] in positive_ids)

    out.negatives = [t for t in _unique(out.negatives) if not is_positive(t)]
    return out


def _group(rows: list[_Row], index: CorpusIndex, path: Path) -> tuple[list[_Row], int]:
    """Merge the lines sharing a query text, in order of first appearance; returns (rows, lines merged away)."""
    groups: OrderedDict[str, list[_Row]] = OrderedDict()
    for r in rows:
        groups.setdefault(query_key(r.query), []).append(r)
    merged = [g[0] if len(g) == 1 else _merge(g, index) for g in groups.values()]
    dropped = len(rows) - len(merged)
    if dropped:
        example = next(g for g in groups.values() if len(g) > 1)
        log.warning("%s: %d line(s) repeat the query text of an earlier line and were merged into it (positives "
                    "unioned, highest grade kept), e.g. lines %s: %r", path, dropped,
                    [r.lines[0] for r in example], example[0].query[:80])
    return merged, dropped


def _to_pair(row: _Row, index: CorpusIndex, split_policy: str, path: Path, stats: dict[str, int]) -> Pair:
    """The pair of one (merged) row: document or chunk level, its split (``split_policy``), its grades."""
    doc_ids = _unique(row.doc_ids)
    chunk_ids = [] if row.doc_level else _unique(row.chunk_ids)
    meta: dict[str, Any] = {"file": path.name, "line": row.lines[0], "resolved_by": row.methods}
    if len(row.lines) > 1:
        meta["merged_lines"] = row.lines
        meta["merged_query_ids"] = row.query_ids
    if row.unresolved:
        meta["unresolved"] = row.unresolved
        stats["unresolved_positives"] += len(row.unresolved)
        stats["pairs_with_unresolved"] += 1
    eval_docs = [d for d in doc_ids if index.doc_split[d] == "eval"]
    train_docs = [d for d in doc_ids if d not in eval_docs]
    if split_policy == "any_eval" or not (eval_docs and train_docs):
        split = "eval" if eval_docs else "train"
    else:  # mixed positives: keep the pair on one side, drop the other side's positives (no document crosses)
        to_train = split_policy == "train_positives" or len(train_docs) >= len(eval_docs)
        split = "train" if to_train else "eval"
        dropped = eval_docs if to_train else train_docs
        key = f"{'eval' if to_train else 'train'}_positives_dropped_from_{split}_pairs"
        meta[f"dropped_{'eval' if to_train else 'train'}_positives"] = dropped
        stats[key] = stats.get(key, 0) + len(dropped)
        doc_ids = [d for d in doc_ids if d not in dropped]
        chunk_ids = [c for c in chunk_ids if index.chunk_by_id[c].doc_id not in dropped]
    kept = chunk_ids if not row.doc_level else doc_ids
    grades = {i: row.grades[i] for i in kept}
    return Pair(
        query_id=row.query_ids[0],
        query=row.query,
        positive_chunk_ids=chunk_ids,
        positive_doc_ids=doc_ids,
        positive_grades=grades if any(g != 1 for g in grades.values()) else {},
        relevance="document" if row.doc_level else "chunk",
        split=split,
        negatives=row.negatives,
        source=SOURCE_BYO,
        meta=meta,
    )


def load_pairs(
    pairs_file: str | Path, chunks: list[Chunk], split_policy: str = "majority"
) -> tuple[list[Pair], dict[str, int]]:
    """Read and resolve a bring-your-own pairs file; lines sharing a query text are merged into one pair.

    Args:
        pairs_file: JSONL file (see the module docstring for the format).
        chunks: All chunks of the corpus (both splits).
        split_policy: ``majority``, ``any_eval`` or ``train_positives`` (see the module docstring).

    Returns:
        (pairs in file order, counters: lines, duplicate_queries_merged, resolved_*, unresolved_positives,
        pairs_with_unresolved, *_positives_dropped_from_*_pairs).

    Raises:
        InputError: missing file, bad JSON, missing/empty query, wrong types, both or neither of
            ``positive_ids``/``positives``, a bad ``relevance`` object, duplicate ``query_id``, no pairs at all.
    """
    path = Path(pairs_file)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist; pass a JSONL file of "
                         f"{{\"query\", \"positive_ids\"|\"positives\"}} objects")
    if split_policy not in ("majority", "any_eval", "train_positives"):
        raise ValueError(f"split_policy must be 'majority', 'any_eval' or 'train_positives', got {split_policy!r}")
    index = CorpusIndex(chunks)
    stats: dict[str, int] = {"lines": 0, "unresolved_positives": 0, "pairs_with_unresolved": 0,
                             "eval_positives_dropped_from_train_pairs": 0}
    rows: list[_Row] = []
    ids_seen: dict[str, int] = {}
    for n, obj in iter_jsonl(path):
        stats["lines"] += 1
        row = _parse(obj, n, f"{path}:{n}", index)
        qid = row.query_ids[0]
        if qid in ids_seen:
            raise InputError(f"{path}:{n}: duplicate query_id {qid!r} (first on line {ids_seen[qid]})")
        ids_seen[qid] = n
        for m in row.methods:
            stats[f"resolved_{m}"] = stats.get(f"resolved_{m}", 0) + 1
        rows.append(row)
    if not rows:
        raise InputError(f"pairs file {path} holds no pairs; each line must be a JSON object with \"query\" and positives")
    rows, stats["duplicate_queries_merged"] = _group(rows, index, path)
    pairs = [_to_pair(r, index, split_policy, path, stats) for r in rows]
    stats["graded_pairs"] = sum(1 for p in pairs if p.positive_grades)
    if stats["unresolved_positives"]:
        log.warning("%s: %d positives of %d pairs did not resolve to the corpus (validate will name them)",
                    path, stats["unresolved_positives"], stats["pairs_with_unresolved"])
    return pairs, stats


# ----------------------------------------------------------------------------------------- BEIR qrels helper
def pairs_from_beir_qrels(beir_dir: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Build bring-your-own pair rows from a BEIR collection's judgements.

    Args:
        beir_dir: Folder with ``queries.jsonl`` and ``qrels/<split>.tsv`` (``query-id corpus-id score``).
        split: Which qrels file to read (``train``, ``dev``, ``test`` ...).

    Returns:
        ``{"query_id", "query", "positive_ids"}`` dicts, one per judged query with at least one positive
        (score > 0), in order of first appearance in the qrels file; ``"relevance": {doc_id: grade}`` is added
        when the query has a grade other than 1 (graded qrels: 1 = relevant, 2 = highly relevant, ...).

    Raises:
        InputError: missing files or a malformed qrels line.
    """
    root = Path(beir_dir)
    qpath, rpath = root / "queries.jsonl", root / "qrels" / f"{split}.tsv"
    for p in (qpath, rpath):
        if not p.is_file():
            raise InputError(f"{p} does not exist; {root} must be a BEIR folder with queries.jsonl and qrels/{split}.tsv")
    queries: dict[str, str] = {}
    for n, obj in iter_jsonl(qpath):
        if "_id" not in obj or not isinstance(obj.get("text"), str):
            raise InputError(f"{qpath}:{n}: each line needs \"_id\" and a string \"text\"")
        queries[str(obj["_id"])] = obj["text"]
    positives: OrderedDict[str, dict[str, int]] = OrderedDict()
    for n, line in iter_text_lines(rpath):  # a byte that is not UTF-8 fails naming the line
        row = next(csv.reader([line], delimiter="\t"), [])
        if not row or (n == 1 and row[0].strip().lower() in {"query-id", "query_id", "qid"}):
            continue
        if len(row) < 3:
            raise InputError(f"{rpath}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
        try:
            score = float(row[2])
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise InputError(f"{rpath}:{n}: score {row[2]!r} is not a number") from None
        qid, did = row[0].strip(), row[1].strip()
        if score > 0:
            grades = positives.setdefault(qid, {})
            grades[did] = max(int(score), grades.get(did, 1))
    missing = [q for q in positives if q not in queries]
    if missing:
        log.warning("%s: %d judged queries are missing from %s and were skipped (e.g. %s)",
                    rpath, len(missing), qpath, missing[:3])
    return [_qrels_row(q, queries[q], grades) for q, grades in positives.items() if q in queries]


def _qrels_row(qid: str, query: str, grades: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {"query_id": qid, "query": query, "positive_ids": list(grades)}
    if any(g != 1 for g in grades.values()):
        row["relevance"] = grades
    return row


def write_pairs_file(rows: list[dict[str, Any]], path: str | Path) -> int:
    """Write pair rows (e.g. from :func:`pairs_from_beir_qrels`) as JSONL; returns the number of lines."""
    return write_jsonl(path, rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m embedforge.stages.sdg.byo BEIR_DIR OUT.jsonl [--split train]``: a pairs file from BEIR qrels."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("beir_dir")
    ap.add_argument("out")
    ap.add_argument("--split", default="train")
    args = ap.parse_args(argv)
    n = write_pairs_file(pairs_from_beir_qrels(args.beir_dir, args.split), args.out)
    print(f"wrote {n} pairs to {args.out}")


if __name__ == "__main__":
    main()

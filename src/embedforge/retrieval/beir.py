"""BEIR-layout collections: read an external folder and evaluate a model on it, and write the eval split in BEIR
layout — see :mod:`embedforge.stages.evaluate` for the protocol."""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.config import EvaluateConfig
from embedforge.contracts import (
    Chunk,
    atomic_write_text,
    iter_jsonl,
    iter_text_lines,
    write_jsonl,
)
from embedforge.errors import InputError
from embedforge.retrieval.text import normalize_ws

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

from embedforge.retrieval.ranking import EvalSet, batch_size_for, retrieval_metrics

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ external BEIR
@dataclass
class BeirCollection:
    """A BEIR folder loaded and checked: corpus (id -> {"title", "text"}), queries (id -> text), qrels."""

    path: Path
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def eval_set(self) -> EvalSet:
        """Its queries and judgements as an :class:`EvalSet` (every query judged per document)."""
        return EvalSet(queries=dict(self.queries), qrels=self.qrels, document_level=set(self.qrels))


def load_beir_folder(beir_dir: str | Path, split: str = "test") -> BeirCollection:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` of a BEIR folder.

    qrels rows naming an unknown query or document id are dropped with a warning; judged queries without any
    relevant (score > 0) document are dropped (they cannot be scored).

    Args:
        beir_dir: The folder.
        split: Which qrels file.

    Returns:
        The :class:`BeirCollection` (only judged queries kept).

    Raises:
        InputError: A file is missing or malformed (the message names it), or no judged query is left.
    """
    folder = Path(beir_dir)
    if not folder.is_dir():
        raise InputError(f"BEIR folder {folder} does not exist (expected corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")
    corpus_path, queries_path, qrels_path = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    for p in (corpus_path, queries_path, qrels_path):
        if not p.is_file():
            raise InputError(f"BEIR folder {folder} lacks {p.relative_to(folder)} (expected corpus.jsonl, "
                             f"queries.jsonl, qrels/{split}.tsv)")
    corpus: dict[str, dict[str, str]] = {}
    for n, obj in iter_jsonl(corpus_path):
        if "_id" not in obj or not isinstance(obj.get("text"), str):
            raise InputError(f"{corpus_path}:{n}: each line needs '_id' and a string 'text'")
        corpus[str(obj["_id"])] = {"title": str(obj.get("title") or ""), "text": obj["text"]}
    queries: dict[str, str] = {}
    for n, obj in iter_jsonl(queries_path):
        if "_id" not in obj or not isinstance(obj.get("text"), str):
            raise InputError(f"{queries_path}:{n}: each line needs '_id' and a string 'text'")
        queries[str(obj["_id"])] = obj["text"]
    if not corpus:
        raise InputError(f"{corpus_path} holds no documents")

    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    unknown_q: set[str] = set()
    unknown_d: set[str] = set()
    for n, line in iter_text_lines(qrels_path):
        for row in csv.reader([line.rstrip("\r\n")], delimiter="\t", quoting=csv.QUOTE_MINIMAL):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise InputError(f"{qrels_path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
            qid, did, score = row[0].strip(), row[1].strip(), row[2].strip()
            try:
                value = float(score)
            except ValueError:
                if n == 1:  # the header line
                    continue
                raise InputError(f"{qrels_path}:{n}: score {score!r} is not a number") from None
            if not math.isfinite(value):
                raise InputError(f"{qrels_path}:{n}: score {score!r} is not a finite number; use integer grades")
            grade = int(value)
            if qid not in queries:
                unknown_q.add(qid)
                continue
            if did not in corpus:
                unknown_d.add(did)
                continue
            qrels[qid][did] = grade
    if unknown_q or unknown_d:
        log.warning(
            "%s: dropped rows with %d query ids not in queries.jsonl (e.g. %s) and %d corpus ids not in "
            "corpus.jsonl (e.g. %s)", qrels_path, len(unknown_q), sorted(unknown_q)[:3], len(unknown_d),
            sorted(unknown_d)[:3])
    no_positive = [q for q, rel in qrels.items() if not any(r > 0 for r in rel.values())]
    for q in no_positive:
        del qrels[q]
    if no_positive:
        log.info("%s: %d judged queries have no relevant document and are not scored", qrels_path, len(no_positive))
    if not qrels:
        raise InputError(
            f"{qrels_path}: no judged query with a relevant document is left after dropping unknown ids "
            f"({len(unknown_q)} unknown query ids, {len(unknown_d)} unknown corpus ids): do the ids match "
            "queries.jsonl and corpus.jsonl?"
        )
    return BeirCollection(path=folder, corpus=corpus, queries={q: queries[q] for q in qrels}, qrels=dict(qrels))


def beir_document_text(doc: dict[str, str]) -> str:
    """A BEIR document as the model sees it: ``title + " " + text``, stripped (BEIR's ``SentenceBERT`` join)."""
    title = doc.get("title") or ""
    return (title + " " + doc["text"]).strip() if title else doc["text"].strip()


def rank_beir_folder(
    model: "SentenceTransformer",
    beir_dir: str | Path | BeirCollection,
    cfg: EvaluateConfig,
    split: str = "test",
    ignore_identical: bool = True,
) -> tuple[BeirCollection, dict[str, dict[str, float]]]:
    """``model``'s ranking of an external BEIR collection's documents for each judged query (whole documents,
    exact search).

    Args:
        model: A loaded sentence-transformers model.
        beir_dir: A BEIR folder, or one already loaded with :func:`load_beir_folder`.
        cfg: Cut-offs and batch size.
        split: The qrels file (``qrels/<split>.tsv``).
        ignore_identical: Remove documents whose (whitespace-normalised) text equals the query's from its ranking.

    Returns:
        ``(collection, results)``: results maps query id -> {doc id: score}, ``max(cfg.all_k)`` each.
    """
    from embedforge.retrieval.encode import encode
    from embedforge.retrieval.search import build_index, top_k

    coll = beir_dir if isinstance(beir_dir, BeirCollection) else load_beir_folder(beir_dir, split)
    doc_ids = list(coll.corpus)
    qids = list(coll.qrels)
    max_k = max(cfg.all_k)
    bs = batch_size_for(model, cfg)
    excluded: dict[str, set[str]] = {q: set() for q in qids}
    if ignore_identical:
        # A document whose text IS the query (argument retrieval: the query's own argument, under its own id) is
        # removed. Ids alone are not compared: in some collections query ids and document ids are unrelated
        # number ranges, and dropping "the query's own id" would silently drop real documents.
        by_text: dict[str, list[str]] = defaultdict(list)
        for d, doc in coll.corpus.items():
            by_text[normalize_ws(doc["text"])].append(d)
        for q in qids:
            excluded[q] = set(by_text.get(normalize_ws(coll.queries[q]), ()))
    log.info("BEIR %s: %d documents, %d judged queries", coll.path, len(doc_ids), len(qids))
    doc_emb = encode(model, [beir_document_text(coll.corpus[d]) for d in doc_ids], kind="document", batch_size=bs,
                     show_progress=True, encoder=cfg.encode)
    query_emb = encode(model, [coll.queries[q] for q in qids], kind="query", batch_size=bs, show_progress=True,
                       encoder=cfg.encode)
    index = build_index(doc_emb)
    slack = max((len(e) for e in excluded.values()), default=0)
    scores, ids = top_k(index, query_emb, min(len(doc_ids), max_k + slack))
    results: dict[str, dict[str, float]] = {}
    for q, s_row, i_row in zip(qids, scores, ids):
        ranked = [(doc_ids[i], float(s)) for s, i in zip(s_row, i_row) if i >= 0 and doc_ids[i] not in excluded[q]]
        results[q] = dict(ranked[:max_k])
    return coll, results


def evaluate_beir_folder(
    model: "SentenceTransformer",
    beir_dir: str | Path | BeirCollection,
    cfg: EvaluateConfig,
    **options: Any,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on an external BEIR collection: those of :func:`rank_beir_folder`'s rankings
    (same arguments; same keys as :func:`~embedforge.retrieval.ranking.evaluate_model`)."""
    coll, results = rank_beir_folder(model, beir_dir, cfg, **options)
    return retrieval_metrics(coll.qrels, results, cfg.all_k)


def write_beir_split(out_dir: str | Path, chunks: Sequence[Chunk], eval_set: EvalSet) -> Path:
    """Write the eval split in BEIR layout (document-level positives expanded to all chunks of the document).

    Args:
        out_dir: Folder to create (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``).
        chunks: All chunks (the corpus).
        eval_set: Queries and qrels.

    Returns:
        The folder.
    """
    folder = Path(out_dir)
    write_jsonl(folder / "corpus.jsonl", ({"_id": c.chunk_id, "title": c.title, "text": c.text} for c in chunks))
    write_jsonl(folder / "queries.jsonl", ({"_id": q, "text": t} for q, t in eval_set.queries.items()))
    chunks_of: dict[str, list[str]] = defaultdict(list)
    for c in chunks:
        chunks_of[c.doc_id].append(c.chunk_id)
    lines = ["query-id\tcorpus-id\tscore"]
    for q, rel in eval_set.qrels.items():
        for target, grade in rel.items():
            targets = chunks_of[target] if q in eval_set.document_level else [target]
            lines.extend(f"{q}\t{cid}\t{grade}" for cid in targets)
    atomic_write_text(folder / "qrels" / "test.tsv", "\n".join(lines) + "\n")
    return folder



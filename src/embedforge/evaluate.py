"""Evaluate stage: base vs fine-tuned retrieval quality on the held-out eval split, with BEIR metrics.

Protocol
--------
- **Queries**: the pairs with ``split == "eval"``. **Corpus**: ALL chunks (train and eval), so chunks of the
  training documents act as distractors.
- **Retrieval**: exact inner product (:func:`embedforge.search.build_index` / :func:`embedforge.search.top_k`)
  over L2-normalised embeddings from :func:`embedforge.encode.encode`; chunks are embedded with
  ``kind="document"`` and queries with ``kind="query"``, so each model uses its own saved prompts.
- **Relevance**: a chunk-level pair (``relevance="chunk"``) is judged on chunk ids. A document-level pair
  (``relevance="document"``) is judged on doc ids, and a document scores as its best chunk: the chunk ranking is
  mapped to doc ids by max score (enough chunks are retrieved that the aggregation still yields ``max(k)``
  documents). Both kinds share one qrels/results dict: pytrec_eval evaluates each query on its own.
- **Metrics** (``beir.retrieval.evaluation.EvaluateRetrieval``; pytrec_eval underneath): ``ndcg``, ``map``,
  ``recall``, ``precision`` (``evaluate``) and ``mrr`` (``evaluate_custom``) at every ``cfg.all_k``, keyed in
  lower case: ``"ndcg@10"``, ``"recall@10"``, ``"map@10"``, ``"precision@10"``, ``"mrr@10"``.
- **Reuse**: the mine stage saves the base model's chunk embeddings (``embeddings.npy`` + ``embedding_ids.json``,
  same text and kind); when their ids match the chunks they replace re-encoding the corpus with the base model.

External collections (``eval_beir``): a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)
is evaluated with whole documents embedded as ``title + " " + text`` (stripped; BEIR's own ``SentenceBERT``
join), truncated by the model's ``max_seq_length``. As MTEB does for ArguAna, a document whose text equals the
query's text (the query's own argument) is removed from its ranking; ids are not compared, because in other
collections (Cranfield) query and document ids are unrelated number ranges. Queries
without any relevant (score > 0) judgement are dropped, since no ranking can score on them.

Output folder: ``evaluation.json`` (see :func:`run`), ``beir/`` (the eval split in BEIR layout: ``corpus.jsonl``
of all chunks, ``queries.jsonl``, ``qrels/test.tsv``) and ``manifest.json``. In ``beir/``, a document-level
positive is expanded to every chunk of its document: an approximation (a chunk-level tool then rewards any chunk
of the document, and counts several chunks of it as several hits) kept so that standard BEIR tools can read it;
``evaluation.json`` holds the exact document-level numbers.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedforge.encode import embedding_dim
from embedforge.text import normalize_ws
from embedforge.config import EvaluateConfig
from embedforge.contracts import (
    BEIR_DIR,
    CHUNKS_FILE,
    EMBEDDING_IDS_FILE,
    EMBEDDINGS_FILE,
    EVALUATION_FILE,
    PAIRS_FILE,
    Chunk,
    Manifest,
    Pair,
    StageTimer,
    atomic_write_text,
    iter_jsonl,
    read_chunks,
    read_json,
    read_pairs,
    write_json,
    write_jsonl,
)
from embedforge.errors import ConfigError, InputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

METRIC_NAMES = ("ndcg", "map", "recall", "precision", "mrr")
#: BEIR's key prefixes -> our lower-case metric names.
_BEIR_KEYS = {"NDCG": "ndcg", "MAP": "map", "Recall": "recall", "P": "precision", "MRR": "mrr"}
#: Largest batch size used on CPU: measured on all-MiniLM-L6-v2 (384 passages, 2 cores), batches of 16-32 were
#: ~25% faster than 128 (sentence-transformers sorts by length, so larger batches only add padding and cache misses).
CPU_MAX_BATCH = 32
_NO_RESULT = "__embedforge_no_result__"



# ------------------------------------------------------------------------------------------------ eval set
@dataclass
class EvalSet:
    """Queries and relevance judgements of the eval split.

    Attributes:
        queries: query id -> query text.
        qrels: query id -> {chunk id (chunk-level) or doc id (document-level): relevance}.
        document_level: ids of the queries judged per document.
        exclude: query id -> chunk ids never ranked for it (``Pair.exclude_chunk_ids``, e.g. the chunk an
            inverse-cloze query was cut from).
    """

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    document_level: set[str] = field(default_factory=set)
    exclude: dict[str, set[str]] = field(default_factory=dict)


def build_eval_set(chunks: Sequence[Chunk], pairs: Iterable[Pair], split: str | None = "eval") -> EvalSet:
    """Queries and qrels of the pairs of ``split`` (all pairs when ``split`` is None).

    Positives that name no known chunk/document are dropped with a warning; a query left without any positive
    is dropped too.

    Args:
        chunks: The whole corpus (every split).
        pairs: Pairs; only those with ``pair.split == split`` are used.
        split: Which pairs are queries ("eval"), or None for all.

    Returns:
        The :class:`EvalSet`.

    Raises:
        InputError: Two selected pairs share a query id.
    """
    chunk_ids = {c.chunk_id for c in chunks}
    chunk_doc = {c.chunk_id: c.doc_id for c in chunks}
    doc_ids = set(chunk_doc.values())
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    doc_level: set[str] = set()
    exclude: dict[str, set[str]] = {}
    unknown: list[str] = []
    for p in pairs:
        if split is not None and p.split != split:
            continue
        if p.query_id in queries:
            raise InputError(f"{PAIRS_FILE}: query_id {p.query_id!r} appears twice; query ids must be unique")
        if p.relevance == "document":
            wanted = list(p.positive_doc_ids) or [chunk_doc[c] for c in p.positive_chunk_ids if c in chunk_doc]
            known = [d for d in wanted if d in doc_ids]
        else:
            wanted = list(p.positive_chunk_ids)
            known = [c for c in wanted if c in chunk_ids]
        unknown.extend(x for x in wanted if x not in set(known))
        if not known:
            log.warning("query %s has no positive in the corpus (%s); skipped", p.query_id, wanted or "none given")
            continue
        queries[p.query_id] = p.query
        qrels[p.query_id] = {x: 1 for x in known}
        if p.relevance == "document":
            doc_level.add(p.query_id)
        if p.exclude_chunk_ids:
            exclude[p.query_id] = set(p.exclude_chunk_ids)
    if unknown:
        log.warning("%d positive ids of the pairs are not in the chunks (e.g. %s); dropped", len(unknown), unknown[:3])
    return EvalSet(queries=queries, qrels=qrels, document_level=doc_level, exclude=exclude)


# ------------------------------------------------------------------------------------------------ metrics
def retrieval_metrics(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: Sequence[int]
) -> dict[str, float]:
    """BEIR metrics of ``results`` against ``qrels`` (every query of ``qrels`` must have results).

    Args:
        qrels: query id -> {doc id: graded relevance (int)}.
        results: query id -> {doc id: score}; the ranking is by score (pytrec_eval breaks ties by doc id).
        k_values: Cut-offs.

    Returns:
        ``{"ndcg@10": ..., "map@10": ..., "recall@10": ..., "precision@10": ..., "mrr@10": ...}`` for every k,
        averaged over the queries (BEIR rounds to 5 decimals).
    """
    from beir.retrieval.evaluation import EvaluateRetrieval

    ks = sorted(set(k_values))
    missing = [q for q in qrels if q not in results]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no results (e.g. {missing[:3]})")
    # A query with no retrieved document must still count (as 0); pytrec_eval would silently skip it.
    res = {q: {d: float(s) for d, s in results[q].items()} or {_NO_RESULT: 0.0} for q in qrels}
    qrels = {q: {d: int(r) for d, r in rel.items()} for q, rel in qrels.items()}
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, res, ks, ignore_identical_ids=False)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, res, ks, metric="mrr")
    out: dict[str, float] = {}
    for table in (ndcg, _map, recall, precision, mrr):
        for key, value in table.items():
            name, _, k = key.partition("@")
            out[f"{_BEIR_KEYS[name]}@{k}"] = float(value)
    return {f"{m}@{k}": out[f"{m}@{k}"] for m in METRIC_NAMES for k in ks}


def kfp_metric_name(name: str) -> str:
    """A metric name KFP's run-metrics table accepts (``^[a-zA-Z]([-_a-zA-Z0-9]{0,62}[a-zA-Z0-9])?$``).

    ``"finetuned_ndcg@10"`` -> ``"finetuned_ndcg_at_10"``.
    """
    import re

    out = re.sub(r"[^-_a-zA-Z0-9]", "_", name.replace("@", "_at_"))
    out = out.strip("-_") or "metric"
    if not out[0].isalpha():
        out = "m_" + out
    return out[:64].rstrip("-_")


# ------------------------------------------------------------------------------------------------ retrieval
def _batch_size(model: "SentenceTransformer", cfg: EvaluateConfig) -> int:
    device = str(getattr(model, "device", "cpu"))
    return cfg.batch_size if device.startswith("cuda") else min(cfg.batch_size, CPU_MAX_BATCH)


def retrieve(
    chunk_embeddings: np.ndarray,
    chunks: Sequence[Chunk],
    query_embeddings: np.ndarray,
    query_ids: Sequence[str],
    max_k: int,
    document_level: set[str] | frozenset[str] = frozenset(),
    exclude: dict[str, set[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Rank the chunks for each query; document-level queries get documents scored by their best chunk.

    Args:
        chunk_embeddings: (n_chunks, dim), rows aligned with ``chunks``, L2-normalised.
        chunks: The corpus.
        query_embeddings: (n_queries, dim), rows aligned with ``query_ids``.
        query_ids: Ids of the queries.
        max_k: How many chunks (chunk-level) or documents (document-level) to keep per query.
        document_level: Query ids whose results are keyed by doc id.
        exclude: Query id -> chunk ids removed from that query's ranking.

    Returns:
        query id -> {chunk id or doc id: score}, at most ``max_k`` entries each.
    """
    from embedforge.search import build_index, top_k

    n = len(chunks)
    index = build_index(chunk_embeddings)
    chunk_ids = [c.chunk_id for c in chunks]
    row_of = {c: i for i, c in enumerate(chunk_ids)}
    doc_of = [c.doc_id for c in chunks]
    n_docs = len(set(doc_of))
    results: dict[str, dict[str, float]] = {}

    exclude = exclude or {}
    skip = {q: {row_of[c] for c in ids if c in row_of} for q, ids in exclude.items()} if exclude else {}
    slack = max((len(v) for v in skip.values()), default=0)

    rows_chunk = [i for i, q in enumerate(query_ids) if q not in document_level]
    if rows_chunk:
        scores, ids = top_k(index, query_embeddings[rows_chunk], min(n, max_k + slack))
        for row, s_row, i_row in zip(rows_chunk, scores, ids):
            masked = skip.get(query_ids[row], ())
            kept = [(i, s) for s, i in zip(s_row, i_row) if i >= 0 and i not in masked][:max_k]
            results[query_ids[row]] = {chunk_ids[i]: float(s) for i, s in kept}

    # Document level: retrieve max_k + slack chunks; widen for the queries whose top chunks cover < max_k docs.
    pending = [i for i, q in enumerate(query_ids) if q in document_level]
    want_docs = min(max_k, n_docs)
    k = min(n, max(2 * max_k, max_k + 20) + slack)
    while pending:
        scores, ids = top_k(index, query_embeddings[pending], k)
        again = []
        for row, s_row, i_row in zip(pending, scores, ids):
            best: dict[str, float] = {}
            masked = skip.get(query_ids[row], ())
            for s, i in zip(s_row, i_row):
                if i >= 0 and i not in masked and doc_of[i] not in best:  # rows are best-first: the first chunk seen is the max
                    best[doc_of[i]] = float(s)
                    if len(best) == want_docs:
                        break
            if len(best) < want_docs and k < n:
                again.append(row)
            else:
                results[query_ids[row]] = best
        pending = again
        k = min(n, k * 4)
    return results


def encode_chunks(model: "SentenceTransformer", chunks: Sequence[Chunk], cfg: EvaluateConfig) -> np.ndarray:
    """Document embeddings of the chunks' texts (the same text and kind the mine stage embeds)."""
    from embedforge.encode import encode

    return encode(model, [c.text for c in chunks], kind="document", batch_size=_batch_size(model, cfg), show_progress=True)


def evaluate_model(
    model: "SentenceTransformer",
    chunks: Sequence[Chunk],
    pairs: Iterable[Pair],
    cfg: EvaluateConfig,
    chunk_embeddings: np.ndarray | None = None,
    split: str | None = "eval",
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on the eval split (eval pairs as queries, all chunks as the corpus).

    Args:
        model: A loaded sentence-transformers model (its saved prompts are used).
        chunks: All chunks (train and eval): the corpus.
        pairs: Pairs; those of ``split`` are the queries (the others are ignored, so all pairs may be passed).
        cfg: Cut-offs (``cfg.all_k``) and batch size.
        chunk_embeddings: Precomputed document embeddings of ``chunks`` by this model (rows aligned), or None
            to encode them.
        split: Split of the query pairs; None uses every pair.

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "map@10": ..., "precision@10": ..., "mrr@10": ...}`` for every k.

    Raises:
        InputError: No usable query, an empty corpus, or ``chunk_embeddings`` of the wrong shape.
    """
    from embedforge.encode import encode

    chunks = list(chunks)
    if not chunks:
        raise InputError(f"{CHUNKS_FILE} holds no chunks: nothing to retrieve from")
    eval_set = build_eval_set(chunks, pairs, split=split)
    if not eval_set.queries:
        raise InputError(
            f"no usable {split or 'any'}-split pairs in {PAIRS_FILE} (none, or none whose positives are in "
            f"{CHUNKS_FILE}): nothing to evaluate"
        )
    if chunk_embeddings is None:
        chunk_embeddings = encode_chunks(model, chunks, cfg)
    dim = embedding_dim(model)
    if chunk_embeddings.shape != (len(chunks), dim):
        raise InputError(
            f"chunk embeddings have shape {tuple(chunk_embeddings.shape)}, expected ({len(chunks)}, {dim}) "
            "(one row per chunk, the model's dimension)"
        )
    qids = list(eval_set.queries)
    query_emb = encode(model, [eval_set.queries[q] for q in qids], kind="query", batch_size=_batch_size(model, cfg),
                       show_progress=True)
    results = retrieve(chunk_embeddings, chunks, query_emb, qids, max(cfg.all_k), eval_set.document_level,
                       eval_set.exclude)
    return retrieval_metrics(eval_set.qrels, results, cfg.all_k)


def load_base_embeddings(base_embeddings_dir: str | Path, chunks: Sequence[Chunk], dim: int) -> np.ndarray | None:
    """The mine stage's base-model chunk embeddings, reordered to ``chunks``; None (with a warning) if unusable.

    Args:
        base_embeddings_dir: Folder with ``embeddings.npy`` and ``embedding_ids.json``.
        chunks: The corpus the rows must cover.
        dim: Expected embedding dimension (the base model's).

    Returns:
        float32 (len(chunks), dim), or None when files are missing or ids/shape do not match the chunks.
    """
    folder = Path(base_embeddings_dir)
    emb_path, ids_path = folder / EMBEDDINGS_FILE, folder / EMBEDDING_IDS_FILE
    if not emb_path.is_file() or not ids_path.is_file():
        log.warning("%s lacks %s or %s: re-encoding the corpus with the base model", folder, EMBEDDINGS_FILE,
                    EMBEDDING_IDS_FILE)
        return None
    ids = read_json(ids_path)
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): re-encoding the corpus with the base model", emb_path, exc)
        return None
    if not isinstance(ids, list) or emb.ndim != 2 or len(ids) != emb.shape[0] or emb.shape[1] != dim:
        log.warning("%s: %s shape %s and %d ids do not fit the base model (dim %d): re-encoding", folder,
                    EMBEDDINGS_FILE, emb.shape, len(ids) if isinstance(ids, list) else -1, dim)
        return None
    row = {cid: i for i, cid in enumerate(ids)}
    wanted = [c.chunk_id for c in chunks]
    missing = [cid for cid in wanted if cid not in row]
    if missing or len(row) != len(ids):
        log.warning("%s: embedding ids do not match the chunks (%d of %d chunks missing, e.g. %s): re-encoding",
                    folder, len(missing), len(wanted), missing[:3])
        return None
    out = np.ascontiguousarray(emb[[row[cid] for cid in wanted]], dtype=np.float32)
    norms = np.linalg.norm(out, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        log.warning("%s: embeddings are not L2-normalised: re-encoding", folder)
        return None
    return out


# ------------------------------------------------------------------------------------------------ external BEIR
@dataclass
class BeirCollection:
    """A BEIR folder loaded and checked: corpus (id -> {"title", "text"}), queries (id -> text), qrels."""

    path: Path
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


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
    with qrels_path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_MINIMAL), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise InputError(f"{qrels_path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
            qid, did, score = row[0].strip(), row[1].strip(), row[2].strip()
            try:
                grade = int(float(score))
            except ValueError:
                if n == 1:  # the header line
                    continue
                raise InputError(f"{qrels_path}:{n}: score {score!r} is not a number") from None
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


def evaluate_beir_folder(
    model: "SentenceTransformer",
    beir_dir: str | Path | BeirCollection,
    cfg: EvaluateConfig,
    split: str = "test",
    ignore_identical: bool = True,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on an external BEIR collection (whole documents, exact search).

    Args:
        model: A loaded sentence-transformers model.
        beir_dir: A BEIR folder, or one already loaded with :func:`load_beir_folder`.
        cfg: Cut-offs and batch size.
        split: The qrels file (``qrels/<split>.tsv``).
        ignore_identical: Remove documents whose (whitespace-normalised) text equals the query's from its ranking.

    Returns:
        The metrics dict (same keys as :func:`evaluate_model`).
    """
    from embedforge.encode import encode
    from embedforge.search import build_index, top_k

    coll = beir_dir if isinstance(beir_dir, BeirCollection) else load_beir_folder(beir_dir, split)
    doc_ids = list(coll.corpus)
    qids = list(coll.qrels)
    max_k = max(cfg.all_k)
    bs = _batch_size(model, cfg)
    excluded: dict[str, set[str]] = {q: set() for q in qids}
    if ignore_identical:
        # A document whose text IS the query (ArguAna: the query's own argument, under its own id) is removed.
        # Ids alone are not compared: in collections like Cranfield query ids and document ids are unrelated
        # number ranges, and dropping "the query's own id" would silently drop real documents.
        by_text: dict[str, list[str]] = defaultdict(list)
        for d, doc in coll.corpus.items():
            by_text[normalize_ws(doc["text"])].append(d)
        for q in qids:
            excluded[q] = set(by_text.get(normalize_ws(coll.queries[q]), ()))
    log.info("BEIR %s: %d documents, %d judged queries", coll.path, len(doc_ids), len(qids))
    doc_emb = encode(model, [beir_document_text(coll.corpus[d]) for d in doc_ids], kind="document", batch_size=bs,
                     show_progress=True)
    query_emb = encode(model, [coll.queries[q] for q in qids], kind="query", batch_size=bs, show_progress=True)
    index = build_index(doc_emb)
    slack = max((len(e) for e in excluded.values()), default=0)
    scores, ids = top_k(index, query_emb, min(len(doc_ids), max_k + slack))
    results: dict[str, dict[str, float]] = {}
    for q, s_row, i_row in zip(qids, scores, ids):
        ranked = [(doc_ids[i], float(s)) for s, i in zip(s_row, i_row) if i >= 0 and doc_ids[i] not in excluded[q]]
        results[q] = dict(ranked[:max_k])
    return retrieval_metrics(coll.qrels, results, cfg.all_k)


# ------------------------------------------------------------------------------------------------ stage
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


def _no_eval_pairs_error(chunks: Sequence[Chunk], pairs: Sequence[Pair], pairs_dir: Path) -> InputError:
    n_eval_chunks = sum(c.split == "eval" for c in chunks)
    if n_eval_chunks == 0:
        hint = ("no document is held out (the chunks have no 'eval' split): raise ingest.eval_fraction "
                "(e.g. 0.2) or add documents so that at least one is held out")
    else:
        hint = (f"{n_eval_chunks} chunks are held out but no query was generated for them: raise "
                "sdg.queries_per_chunk / enable sdg.title_queries, or give eval pairs (split 'eval') in your "
                "pairs file")
    return InputError(f"{pairs_dir / PAIRS_FILE} has {len(pairs)} pairs but none in the 'eval' split usable "
                      f"against {CHUNKS_FILE}; {hint}")


def _round(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in metrics.items()}


def run(
    chunks_dir: str | Path,
    pairs_dir: str | Path,
    base_model: str,
    finetuned_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    base_embeddings_dir: str | Path | None = None,
    eval_beir: str | Path | None = None,
) -> Manifest:
    """Evaluate the base and the fine-tuned model on the eval split (and optionally an external BEIR folder).

    Args:
        chunks_dir: The ``chunks`` artifact (all chunks are the corpus).
        pairs_dir: The ``pairs`` artifact (eval-split pairs are the queries).
        base_model: Base model folder or id.
        finetuned_dir: The fine-tuned sentence-transformers folder.
        out_dir: Output folder: ``evaluation.json``, ``beir/``, ``manifest.json``.
        cfg: Evaluation settings.
        base_embeddings_dir: The ``mined`` artifact, whose base-model chunk embeddings are reused when their ids
            match the chunks (else the corpus is re-encoded, with a warning).
        eval_beir: Optional external BEIR folder evaluated with both models too.

    Returns:
        The manifest. ``evaluation.json`` holds ``primary_metric``, ``base``, ``finetuned``, ``delta``
        (fine-tuned minus base), ``external`` (only with ``eval_beir``: ``path``, ``base``, ``finetuned``,
        ``delta``, ``counts``), ``counts`` and ``models``.

    Raises:
        InputError: No eval pairs, unreadable inputs, or a bad ``eval_beir`` folder.
    """
    from embedforge.encode import load_model, resolve_model_path

    with StageTimer("evaluate") as timer:
        chunks_dir, pairs_dir, out_dir = Path(chunks_dir), Path(pairs_dir), Path(out_dir)
        metric_names = {f"{m}@{k}" for m in METRIC_NAMES for k in cfg.all_k}
        if cfg.primary_metric not in metric_names:
            raise ConfigError(f"evaluate.primary_metric {cfg.primary_metric!r} is not computed: use one of "
                              f"{sorted(metric_names)} or add its k to evaluate.extra_k")
        chunks = read_chunks(chunks_dir)
        pairs = read_pairs(pairs_dir)
        if not chunks:
            raise InputError(f"{chunks_dir / CHUNKS_FILE} holds no chunks")
        eval_set = build_eval_set(chunks, pairs, split="eval")
        if not eval_set.queries:
            raise _no_eval_pairs_error(chunks, pairs, pairs_dir)
        external = load_beir_folder(eval_beir) if eval_beir else None  # fail fast, before any encoding
        out_dir.mkdir(parents=True, exist_ok=True)

        base = load_model(base_model)
        base_emb = None
        if base_embeddings_dir:
            base_emb = load_base_embeddings(base_embeddings_dir, chunks, embedding_dim(base))
            if base_emb is not None:
                log.info("reusing the base model's chunk embeddings from %s", base_embeddings_dir)
        log.info("evaluating base model %s on %d eval queries over %d chunks", base_model, len(eval_set.queries),
                 len(chunks))
        base_metrics = evaluate_model(base, chunks, pairs, cfg, chunk_embeddings=base_emb)
        finetuned = load_model(str(finetuned_dir))
        log.info("evaluating fine-tuned model %s", finetuned_dir)
        ft_metrics = evaluate_model(finetuned, chunks, pairs, cfg)

        result: dict[str, Any] = {
            "primary_metric": cfg.primary_metric,
            "base": _round(base_metrics),
            "finetuned": _round(ft_metrics),
            "delta": _round({k: ft_metrics[k] - base_metrics[k] for k in ft_metrics}),
        }
        if external is not None:
            ext_base = evaluate_beir_folder(base, external, cfg)
            ext_ft = evaluate_beir_folder(finetuned, external, cfg)
            result["external"] = {
                "path": str(eval_beir),
                "base": _round(ext_base),
                "finetuned": _round(ext_ft),
                "delta": _round({k: ext_ft[k] - ext_base[k] for k in ext_ft}),
                "counts": {"queries": len(external.qrels), "corpus_docs": len(external.corpus)},
            }
        counts = {
            "eval_queries": len(eval_set.queries),
            "document_level_queries": len(eval_set.document_level),
            "corpus_chunks": len(chunks),
            "corpus_docs": len({c.doc_id for c in chunks}),
        }
        result["counts"] = counts
        result["models"] = {"base": base_model, "base_path": resolve_model_path(base_model),
                            "finetuned": str(finetuned_dir)}
        result["reused_base_embeddings"] = base_emb is not None
        log.info("%s: base %.4f -> fine-tuned %.4f", cfg.primary_metric, base_metrics[cfg.primary_metric],
                 ft_metrics[cfg.primary_metric])

        write_beir_split(out_dir / BEIR_DIR, chunks, eval_set)
        write_json(out_dir / EVALUATION_FILE, result)
        inputs: dict[str, str | Path] = {"chunks": chunks_dir, "pairs": pairs_dir, "finetuned": Path(finetuned_dir)}
        if base_embeddings_dir:
            inputs["base_embeddings"] = Path(base_embeddings_dir)
        if eval_beir:
            inputs["eval_beir"] = Path(eval_beir)
        extra_counts = {"external_queries": len(external.qrels)} if external is not None else {}
        return timer.write_manifest(
            out_dir, counts={**counts, **extra_counts}, inputs=inputs, config=cfg,
            primary_metric=cfg.primary_metric,
            base_primary=base_metrics[cfg.primary_metric],
            finetuned_primary=ft_metrics[cfg.primary_metric],
        )

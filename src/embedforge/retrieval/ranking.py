"""Retrieval and its metrics: the eval set built from pairs, exact inner-product retrieval with document-level
max-chunk aggregation and masked chunks, and BEIR's metrics (pytrec_eval underneath) — see
:mod:`embedforge.stages.evaluate` for the protocol."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from embedforge.config import EvaluateConfig
from embedforge.contracts import (
    CHUNKS_FILE,
    PAIRS_FILE,
    Chunk,
    Pair,
)
from embedforge.errors import InputError
from embedforge.retrieval.encode import embedding_dim

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

METRIC_NAMES = ("ndcg", "map", "recall", "precision", "mrr")
#: BEIR's key prefixes -> our lower-case metric names.
_BEIR_KEYS = {"NDCG": "ndcg", "MAP": "map", "Recall": "recall", "P": "precision", "MRR": "mrr"}
#: Largest batch size used on CPU: sentence-transformers sorts by length, so larger CPU batches only add padding
#: and cache misses.
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


#: Metrics in evaluation.json, and the gate's re-evaluation of a champion, are rounded to this many decimals, so a
#: number read back from a report compares equal to the same number computed again.
METRIC_DECIMALS = 5


def round_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Every value rounded to :data:`METRIC_DECIMALS` decimals (as a plain float, for JSON and MLflow)."""
    return {k: round(float(v), METRIC_DECIMALS) for k, v in metrics.items()}


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
        qrels[p.query_id] = {x: p.positive_grades.get(x, 1) for x in known}  # graded judgements (nDCG)
        if p.relevance == "document":
            doc_level.add(p.query_id)
        if p.exclude_chunk_ids:
            exclude[p.query_id] = set(p.exclude_chunk_ids)
    if unknown:
        log.warning("%d positive ids of the pairs are not in the chunks (e.g. %s); dropped", len(unknown), unknown[:3])
    return EvalSet(queries=queries, qrels=qrels, document_level=doc_level, exclude=exclude)


# ------------------------------------------------------------------------------------------------ metrics
def _for_pytrec_eval(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """qrels and results in the types pytrec_eval takes; raises ValueError for a judged query without results."""
    missing = [q for q in qrels if q not in results]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no results (e.g. {missing[:3]})")
    # A query with no retrieved document must still count (as 0); pytrec_eval would silently skip it.
    res = {q: {d: float(s) for d, s in results[q].items()} or {_NO_RESULT: 0.0} for q in qrels}
    return {q: {d: int(r) for d, r in rel.items()} for q, rel in qrels.items()}, res


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
    qrels, res = _for_pytrec_eval(qrels, results)
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, res, ks, ignore_identical_ids=False)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, res, ks, metric="mrr")
    out: dict[str, float] = {}
    for table in (ndcg, _map, recall, precision, mrr):
        for key, value in table.items():
            name, _, k = key.partition("@")
            out[f"{_BEIR_KEYS[name]}@{k}"] = float(value)
    return {f"{m}@{k}": out[f"{m}@{k}"] for m in METRIC_NAMES for k in ks}


def per_query_metrics(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Each query's own scores, under the names of :func:`retrieval_metrics`: their mean over the queries is
    :func:`retrieval_metrics` (which BEIR computes from the same pytrec_eval scores, then rounds).

    ``ndcg``/``map``/``recall``/``precision`` are pytrec_eval's ``ndcg_cut``/``map_cut``/``recall``/``P``; ``mrr@k``
    is pytrec_eval's ``recip_rank`` of the top ``k`` results (BEIR's definition: 1 / rank of the first relevant
    hit within ``k``, else 0). Used for bootstrap confidence intervals and per-query wins/losses in the report.

    Args:
        qrels: query id -> {doc id: graded relevance (int)}.
        results: query id -> {doc id: score}; every query of ``qrels`` must have an entry.
        k_values: Cut-offs.

    Returns:
        query id -> ``{"ndcg@10": ..., "map@10": ..., "recall@10": ..., "precision@10": ..., "mrr@10": ...}``.
    """
    import pytrec_eval

    ks = sorted(set(k_values))
    qrels, res = _for_pytrec_eval(qrels, results)
    cut = ",".join(map(str, ks))
    scores = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"map_cut.{cut}", f"recall.{cut}",
                                                    f"P.{cut}"}).evaluate(res)
    out = {q: {} for q in qrels}
    for q, table in out.items():
        for k in ks:
            for name, key in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("precision", "P")):
                table[f"{name}@{k}"] = float(scores[q][f"{key}_{k}"])
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:
        top = {q: dict(sorted(r.items(), key=lambda hit: -hit[1])[:k]) for q, r in res.items()}
        for q, s in reciprocal.evaluate(top).items():
            out[q][f"mrr@{k}"] = float(s["recip_rank"])
    return {q: {f"{m}@{k}": t[f"{m}@{k}"] for m in METRIC_NAMES for k in ks} for q, t in out.items()}


@dataclass(frozen=True)
class Scores:
    """A model's retrieval metrics over a set of queries and each query's own (what paired comparisons need).

    Attributes:
        metrics: ``{"ndcg@10": ..., ...}`` averaged over the queries (:func:`retrieval_metrics`).
        per_query: query id -> the same metrics of that query alone (:func:`per_query_metrics`), in the order of
            the qrels.
    """

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]


def score_rankings(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: Sequence[int]
) -> Scores:
    """The :class:`Scores` of ``results`` against ``qrels`` (arguments as :func:`retrieval_metrics`)."""
    return Scores(retrieval_metrics(qrels, results, k_values), per_query_metrics(qrels, results, k_values))


# ------------------------------------------------------------------------------------------------ retrieval
def batch_size_for(model: "SentenceTransformer", cfg: EvaluateConfig) -> int:
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
    from embedforge.retrieval.search import build_index, top_k

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
    from embedforge.retrieval.encode import encode

    return encode(model, [c.text for c in chunks], kind="document", batch_size=batch_size_for(model, cfg),
                  show_progress=True, encoder=cfg.encode)


def evaluate_model(
    model: "SentenceTransformer",
    chunks: Sequence[Chunk],
    pairs: Iterable[Pair],
    cfg: EvaluateConfig,
    chunk_embeddings: np.ndarray | None = None,
    split: str | None = "eval",
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on the eval split (eval pairs as queries, all chunks as the corpus).

    The metrics of :func:`rank_queries`' rankings; arguments, errors and protocol are the same (their per-query
    scores: :func:`score_rankings` of the same rankings).

    Returns:
        ``{"ndcg@10": ..., "recall@10": ..., "map@10": ..., "precision@10": ..., "mrr@10": ...}`` for every k.
    """
    eval_set, results = rank_queries(model, chunks, pairs, cfg, chunk_embeddings=chunk_embeddings, split=split)
    return retrieval_metrics(eval_set.qrels, results, cfg.all_k)


def rank_queries(
    model: "SentenceTransformer",
    chunks: Sequence[Chunk],
    pairs: Iterable[Pair],
    cfg: EvaluateConfig,
    chunk_embeddings: np.ndarray | None = None,
    split: str | None = "eval",
) -> tuple[EvalSet, dict[str, dict[str, float]]]:
    """The eval set of ``split`` and ``model``'s ranking for each of its queries (see :func:`retrieve`).

    Args:
        model: A loaded sentence-transformers model (its saved prompts are used).
        chunks: All chunks (train and eval): the corpus.
        pairs: Pairs; those of ``split`` are the queries (the others are ignored, so all pairs may be passed).
        cfg: Cut-offs (``cfg.all_k``) and batch size.
        chunk_embeddings: Precomputed document embeddings of ``chunks`` by this model (rows aligned), or None
            to encode them.
        split: Split of the query pairs; None uses every pair.

    Returns:
        ``(eval_set, results)``: results maps query id -> {chunk id or doc id: score}, ``max(cfg.all_k)`` each.

    Raises:
        InputError: No usable query, an empty corpus, or ``chunk_embeddings`` of the wrong shape.
    """
    eval_set, by_dim = rank_queries_by_dimension(model, chunks, pairs, cfg, (), chunk_embeddings, split)
    return eval_set, by_dim[embedding_dim(model)]


def rank_queries_by_dimension(
    model: "SentenceTransformer",
    chunks: Sequence[Chunk],
    pairs: Iterable[Pair],
    cfg: EvaluateConfig,
    dims: Sequence[int],
    chunk_embeddings: np.ndarray | None = None,
    split: str | None = "eval",
) -> tuple[EvalSet, dict[int, dict[str, dict[str, float]]]]:
    """:func:`rank_queries` at the model's full width and at each of ``dims`` (Matryoshka prefixes): queries and
    chunks are encoded once, at full width, and each prefix is the first ``d`` dimensions renormalised
    (:func:`embedforge.retrieval.dimensions.truncate`, what serving returns for ``dimensions=d``).

    Returns:
        ``(eval_set, {dimension: results})``, the full width among the keys. Arguments and errors as
        :func:`rank_queries`; a dimension outside 1..width raises InputError.
    """
    from embedforge.retrieval.dimensions import truncate
    from embedforge.retrieval.encode import encode

    chunks = list(chunks)
    if not chunks:
        raise InputError(f"{CHUNKS_FILE} holds no chunks: nothing to retrieve from")
    eval_set = build_eval_set(chunks, pairs, split=split)
    if not eval_set.queries:
        raise InputError(
            f"no usable {split or 'any'}-split pairs in {PAIRS_FILE} (none, or none whose positives are in "
            f"{CHUNKS_FILE}): nothing to evaluate"
        )
    dim = embedding_dim(model)
    if any(not 1 <= d <= dim for d in dims):
        raise InputError(f"dimensions {list(dims)}: each must be between 1 and the model's {dim}")
    if chunk_embeddings is None:
        chunk_embeddings = encode_chunks(model, chunks, cfg)
    if chunk_embeddings.shape != (len(chunks), dim):
        raise InputError(
            f"chunk embeddings have shape {tuple(chunk_embeddings.shape)}, expected ({len(chunks)}, {dim}) "
            "(one row per chunk, the model's dimension)"
        )
    qids = list(eval_set.queries)
    query_emb = encode(model, [eval_set.queries[q] for q in qids], kind="query", batch_size=batch_size_for(model, cfg),
                       show_progress=True, encoder=cfg.encode)
    by_dim = {}
    for d in sorted({dim, *dims}, reverse=True):
        q, c = (query_emb, chunk_embeddings) if d == dim else (truncate(query_emb, d), truncate(chunk_embeddings, d))
        by_dim[d] = retrieve(c, chunks, q, qids, max(cfg.all_k), eval_set.document_level, eval_set.exclude)
    return eval_set, by_dim

"""Evaluate stage: base vs fine-tuned retrieval quality on the held-out eval split, with BEIR metrics.

Protocol
--------
- **Queries**: the pairs with ``split == "eval"``. **Corpus**: ALL chunks (train and eval), so chunks of the
  training documents act as distractors.
- **Retrieval**: exact inner product (:func:`embedforge.retrieval.search.build_index` / :func:`embedforge.retrieval.search.top_k`)
  over L2-normalised embeddings from :func:`embedforge.retrieval.encode.encode`; chunks are embedded with
  ``kind="document"`` and queries with ``kind="query"``, so each model uses its own saved prompts.
- **Relevance**: a chunk-level pair (``relevance="chunk"``) is judged on chunk ids. A document-level pair
  (``relevance="document"``) is judged on doc ids, and a document scores as its best chunk: the chunk ranking is
  mapped to doc ids by max score (enough chunks are retrieved that the aggregation still yields ``max(k)``
  documents). Both kinds share one qrels/results dict: pytrec_eval evaluates each query on its own.
- **Metrics** (``beir.retrieval.evaluation.EvaluateRetrieval``; pytrec_eval underneath): ``ndcg``, ``map``,
  ``recall``, ``precision`` (``evaluate``) and ``mrr`` (``evaluate_custom``) at every ``cfg.all_k``, keyed in
  lower case: ``"ndcg@10"``, ``"recall@10"``, ``"map@10"``, ``"precision@10"``, ``"mrr@10"``.
- **Matryoshka**: a model trained with ``train.matryoshka_dims`` (recorded in its folder,
  :mod:`embedforge.retrieval.dimensions`) is also scored on the first d dimensions of each trained d: the same
  embeddings sliced and renormalised, no second encoding (``by_dimension`` in ``evaluation.json``).
- **Reuse**: the mine stage saves the base model's chunk embeddings (``embeddings.npy`` + ``embedding_ids.json``,
  same text and kind); when their ids match the chunks they replace re-encoding the corpus with the base model.
  On a CPU (``cfg.encode``: ONNX Runtime) every corpus-scale encoding is also kept by model content and texts
  (:mod:`embedforge.retrieval.embedding_cache`): the base model's ``eval_beir`` documents are embedded once per
  ``--out``, not once per run, and the gate reads them back for a champion evaluated on them before.

External collections (``eval_beir``): a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)
is evaluated with whole documents embedded as ``title + " " + text`` (stripped; BEIR's own ``SentenceBERT``
join), truncated by the model's ``max_seq_length``. As MTEB does for argument-retrieval collections, a document
whose text equals the query's text (the query's own argument) is removed from its ranking; ids are not compared,
because in other collections query and document ids are unrelated number ranges. Queries
without any relevant (score > 0) judgement are dropped, since no ranking can score on them.

Output folder: ``evaluation.json`` (see :func:`run`), ``per_query.jsonl`` (one
:class:`~embedforge.contracts.QueryEvaluation` per eval query: both models' scores, their top
:data:`RANKING_DEPTH` hits, and LLM pairs' query/reasoning types; what the run report's confidence intervals,
wins/losses and rankings and the gate's paired intervals are computed from), with ``eval_beir`` also
``external_per_query.jsonl`` (the same records for the external collection's judged queries), ``beir/`` (the eval split in BEIR layout: ``corpus.jsonl``
of all chunks, ``queries.jsonl``, ``qrels/test.tsv``) and ``manifest.json``. In ``beir/``, a document-level
positive is expanded to every chunk of its document: an approximation (a chunk-level tool then rewards any chunk
of the document, and counts several chunks of it as several hits) kept so that standard BEIR tools can read it;
``evaluation.json`` holds the exact document-level numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from embedforge.config import EvaluateConfig, ModelConfig
from embedforge.contracts import (
    BEIR_DIR,
    CHUNKS_FILE,
    EVALUATION_FILE,
    EXTERNAL_PER_QUERY_FILE,
    PAIRS_FILE,
    PER_QUERY_FILE,
    Chunk,
    EvaluationResult,
    ExternalEvaluation,
    Manifest,
    Pair,
    QueryEvaluation,
    RankedHit,
    StageTimer,
    read_chunks,
    read_embeddings,
    read_pairs,
    write_json,
    write_jsonl,
)
from embedforge.errors import ConfigError, InputError
from embedforge.retrieval.beir import (  # noqa: F401  (evaluate_beir_folder: re-exported with the protocol)
    evaluate_beir_folder,
    load_beir_folder,
    rank_beir_folder,
    write_beir_split,
)
from embedforge.retrieval.dimensions import trained_dims
from embedforge.retrieval.encode import embedding_dim
from embedforge.retrieval.ranking import (
    METRIC_NAMES,
    EvalSet,
    build_eval_set,
    per_query_metrics,
    rank_queries_by_dimension,
    retrieval_metrics,
    round_metrics,
)

log = logging.getLogger(__name__)

#: How many top hits of each model ``per_query.jsonl`` keeps per query.
RANKING_DEPTH = 10



def per_query_records(
    eval_set: EvalSet,
    pairs: Sequence[Pair],
    base_results: dict[str, dict[str, float]],
    finetuned_results: dict[str, dict[str, float]],
    k_values: Sequence[int],
) -> list[QueryEvaluation]:
    """One record per eval query: both models' per-query metrics and top :data:`RANKING_DEPTH` hits.

    Args:
        eval_set: The queries and qrels both models were ranked on.
        pairs: The pairs (their ``meta.query_type`` / ``meta.reasoning_type`` and ``source`` are copied); a query
            without a pair (an external collection's) gets none.
        base_results: The base model's rankings (query id -> {id: score}).
        finetuned_results: The fine-tuned model's rankings.
        k_values: Cut-offs of the metrics.

    Returns:
        Records in the eval set's query order.
    """
    by_id = {p.query_id: p for p in pairs}
    base_scores = per_query_metrics(eval_set.qrels, base_results, k_values)
    ft_scores = per_query_metrics(eval_set.qrels, finetuned_results, k_values)

    def top(ranking: dict[str, float]) -> list[RankedHit]:
        hits = sorted(ranking.items(), key=lambda hit: -hit[1])[:RANKING_DEPTH]
        return [RankedHit(id=i, score=round(s, 5)) for i, s in hits]

    records = []
    for qid, text in eval_set.queries.items():
        pair = by_id.get(qid)
        meta = pair.meta if pair is not None else {}
        records.append(QueryEvaluation(
            query_id=qid, query=text, relevance="document" if qid in eval_set.document_level else "chunk",
            relevant=sorted(i for i, grade in eval_set.qrels[qid].items() if grade > 0),
            query_type=meta.get("query_type"), reasoning_type=meta.get("reasoning_type"),
            source=pair.source if pair is not None else "",
            base=round_metrics(base_scores[qid]), finetuned=round_metrics(ft_scores[qid]),
            base_ranking=top(base_results[qid]), finetuned_ranking=top(finetuned_results[qid]),
        ))
    return records


# ------------------------------------------------------------------------------------------------ stage
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


def run(
    chunks_dir: str | Path,
    pairs_dir: str | Path,
    base_model: str,
    finetuned_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    base_embeddings_dir: str | Path | None = None,
    eval_beir: str | Path | None = None,
    model_cfg: ModelConfig | None = None,
) -> Manifest:
    """Evaluate the base and the fine-tuned model on the eval split (and optionally an external BEIR folder).

    Args:
        chunks_dir: The ``chunks`` artifact (all chunks are the corpus).
        pairs_dir: The ``pairs`` artifact (eval-split pairs are the queries).
        base_model: Base model folder or id.
        finetuned_dir: The fine-tuned sentence-transformers folder.
        out_dir: Output folder: ``evaluation.json``, ``per_query.jsonl`` (and ``external_per_query.jsonl``),
            ``beir/``, ``manifest.json``.
        cfg: Evaluation settings.
        base_embeddings_dir: The ``mined`` artifact, whose base-model chunk embeddings are reused when their ids
            match the chunks (else the corpus is re-encoded, with a warning).
        eval_beir: Optional external BEIR folder evaluated with both models too.

    Returns:
        The manifest. ``evaluation.json`` holds ``primary_metric``, ``base``, ``finetuned``, ``delta``
        (fine-tuned minus base), ``external`` (only with ``eval_beir``: ``path``, ``base``, ``finetuned``,
        ``delta``, ``counts``), ``counts``, ``models`` and, for a model trained with Matryoshka dimensions
        (:mod:`embedforge.retrieval.dimensions`), ``by_dimension``: both models' metrics on the first d
        dimensions (renormalised) of the same embeddings, for each trained d (the full width's equal ``base`` and
        ``finetuned``).

    Raises:
        InputError: No eval pairs, unreadable inputs, or a bad ``eval_beir`` folder.
    """
    from embedforge.retrieval.encode import device_kind, load_model, resolve_model_path

    timer = StageTimer("evaluate")
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

    base = load_model(base_model, model=model_cfg)  # as mine and train loaded it
    base_emb = None
    if base_embeddings_dir:
        try:
            base_emb, _ = read_embeddings(base_embeddings_dir, [c.chunk_id for c in chunks], embedding_dim(base))
            log.info("reusing the base model's chunk embeddings from %s", base_embeddings_dir)
        except InputError as exc:
            log.warning("%s: re-encoding the corpus with the base model", exc)
    log.info("evaluating base model %s on %d eval queries over %d chunks", base_model, len(eval_set.queries),
             len(chunks))
    finetuned = load_model(str(finetuned_dir))
    dims = [d for d in trained_dims(finetuned_dir) if d <= embedding_dim(finetuned)]
    if any(d > embedding_dim(base) for d in dims):  # another base width (a Dense layer): its prefixes are not scored
        log.warning("the base model is %d wide: its metrics at %s are not computed", embedding_dim(base), dims)
    base_dims = [d for d in dims if d <= embedding_dim(base)]
    _, base_by_dim = rank_queries_by_dimension(base, chunks, pairs, cfg, base_dims, chunk_embeddings=base_emb)
    base_results = base_by_dim[embedding_dim(base)]
    base_metrics = retrieval_metrics(eval_set.qrels, base_results, cfg.all_k)
    log.info("evaluating fine-tuned model %s%s", finetuned_dir, f" (and its first {dims} dimensions)" if dims else "")
    _, ft_by_dim = rank_queries_by_dimension(finetuned, chunks, pairs, cfg, dims)
    ft_results = ft_by_dim[embedding_dim(finetuned)]
    ft_metrics = retrieval_metrics(eval_set.qrels, ft_results, cfg.all_k)
    by_dimension = {d: {"finetuned": round_metrics(retrieval_metrics(eval_set.qrels, ft_by_dim[d], cfg.all_k)),
                        **({"base": round_metrics(retrieval_metrics(eval_set.qrels, base_by_dim[d], cfg.all_k))}
                           if d in base_by_dim else {})} for d in dims}
    for d, m in by_dimension.items():
        log.info("%s at %d dimensions: fine-tuned %.4f", cfg.primary_metric, d, m["finetuned"][cfg.primary_metric])

    external_result = external_records = None
    if external is not None:
        _, ext_base_results = rank_beir_folder(base, external, cfg)
        _, ext_ft_results = rank_beir_folder(finetuned, external, cfg)
        ext_base = retrieval_metrics(external.qrels, ext_base_results, cfg.all_k)
        ext_ft = retrieval_metrics(external.qrels, ext_ft_results, cfg.all_k)
        external_records = per_query_records(external.eval_set(), [], ext_base_results, ext_ft_results, cfg.all_k)
        external_result = ExternalEvaluation(
            path=str(eval_beir), base=round_metrics(ext_base), finetuned=round_metrics(ext_ft),
            delta=round_metrics({k: ext_ft[k] - ext_base[k] for k in ext_ft}),
            counts={"queries": len(external.qrels), "corpus_docs": len(external.corpus)},
        )
    counts = {
        "eval_queries": len(eval_set.queries),
        "document_level_queries": len(eval_set.document_level),
        "corpus_chunks": len(chunks),
        "corpus_docs": len({c.doc_id for c in chunks}),
    }
    result = EvaluationResult(
        primary_metric=cfg.primary_metric,
        base=round_metrics(base_metrics),
        finetuned=round_metrics(ft_metrics),
        delta=round_metrics({k: ft_metrics[k] - base_metrics[k] for k in ft_metrics}),
        external=external_result,
        counts=counts,
        models={"base": base_model, "base_path": resolve_model_path(base_model), "finetuned": str(finetuned_dir)},
        reused_base_embeddings=base_emb is not None,
        device=device_kind(finetuned),
        by_dimension=by_dimension,
    )
    log.info("%s: base %.4f -> fine-tuned %.4f", cfg.primary_metric, base_metrics[cfg.primary_metric],
             ft_metrics[cfg.primary_metric])

    write_beir_split(out_dir / BEIR_DIR, chunks, eval_set)
    write_jsonl(out_dir / PER_QUERY_FILE, per_query_records(eval_set, pairs, base_results, ft_results, cfg.all_k))
    if external_records is not None:
        write_jsonl(out_dir / EXTERNAL_PER_QUERY_FILE, external_records)
    write_json(out_dir / EVALUATION_FILE, result.model_dump(mode="json"))
    inputs: dict[str, str | Path] = {"chunks": chunks_dir, "pairs": pairs_dir, "finetuned": Path(finetuned_dir)}
    if base_embeddings_dir:
        inputs["base_embeddings"] = Path(base_embeddings_dir)
    if eval_beir:
        inputs["eval_beir"] = Path(eval_beir)
    extra_counts = {"external_queries": len(external.qrels)} if external is not None else {}
    return timer.write_manifest(
        out_dir, counts={**counts, **extra_counts}, inputs=inputs, config=cfg, result=result,
    )

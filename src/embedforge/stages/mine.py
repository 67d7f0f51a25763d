"""Hard-negative mining: (query, positive) pairs -> ``anchor, positive, negative_1..n`` training rows.

Steps:
1. Embed every chunk once as a document with the base model and save the matrix (``embeddings.npy`` +
   ``embedding_ids.json``, chunk ids in row order) so evaluation can reuse it for the base model
   (:func:`embedforge.contracts.read_embeddings` reads them back).
2. Embed the train-split queries (query prompt) and search the chunks with an exact FAISS inner-product index.
3. For each pair, resolve its positives: the listed ``positive_chunk_ids`` (one example each, at most
   ``max_positives_per_pair``; train samples a few per epoch, :mod:`embedforge.stages.train.positives`), or for
   ``relevance="document"`` the chunk of each positive document that the base model scores highest for the query.
   With graded judgements (``Pair.positive_grades``) every grade > 0 is trained on (``train_grades="all"``, the
   default: it trained better models than the top grade alone on graded human judgements); with
   ``train_grades="top"`` lower grades are neither positive nor negative: never mined (step 4) and listed with
   every other text positive for the query in ``known_positives.jsonl``, which train masks in-batch. A row's
   ``grade`` column carries its positive's grade when above 1 (``train.grade_power`` weighs rows by it). The
   positive's text is ``pair.positive_text`` when set (e.g. an inverse-cloze positive), else the chunk's text.
4. Negatives: the pair's user-supplied ``negatives`` first, then mined ones, best first, from the top
   ``candidates`` neighbours that survive the filters:

   - never a chunk of any positive document of the pair (a positive's own document is never a negative);
   - never a text equal to a positive of the pair, nor one of the ``skip_top`` best candidates (0 by default);
   - with ``margin`` > 0, the positive-aware margin of NV-Retriever ("TopK-PercPos", Moreira et al. 2024): drop a
     candidate whose score exceeds ``margin x positive score`` (e.g. 0.95), as a likely false negative. Off by
     default (``margin=0``): on human-judged pairs the plain top candidates — the judged documents excluded, as
     in sentence-transformers' ``mine_hard_negatives`` — trained better models. The reference score is the
     query's best trained positive (``margin_reference="best_positive"``, default) or each example's own positive
     (``"positive"``; hands weakly-scored positives only easy negatives, which trained worse models).

   Everything positive for a query text in any of its pairs (chunks of its positive documents, its positive texts)
   is excluded: two pairs with the same query never make each other's positives negatives.

How many negatives a pair's examples get, and whether a round-trip consistency filter may drop the pair, depend
on the kind of source that made it (:mod:`embedforge.contracts.policy`: offline-generator pairs are trained
conservatively). The policies applied, with the pairs and rows each produced, are recorded in the manifest
(``policy``), where train reads its WiSE-FT default. Rows of offline pairs beside the user's carry ``augment``.

Scores are base-model cosines (embeddings are L2-normalised). The output is deterministic for fixed inputs.
References:
    Moreira et al. 2024, "NV-Retriever: Improving text embedding models with effective hard-negative mining",
    https://arxiv.org/abs/2407.15831
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedforge import contracts
from embedforge.config import DEFAULT_BASE_MODEL, MineConfig, ModelConfig
from embedforge.contracts import (
    AppliedPolicy,
    Chunk,
    Manifest,
    MinedPolicy,
    Pair,
    PairKind,
    PairPolicy,
    StageTimer,
    TrainExample,
    policy,
)
from embedforge.contracts.positives import add_rewrites, write_known_positives
from embedforge.errors import InputError

log = logging.getLogger(__name__)

STAGE = "mine"


@dataclass
class _Corpus:
    """The chunks, and where each chunk id and each document's chunks sit in the embedding matrix."""

    chunks: list[Chunk]
    chunk_row: dict[str, int]
    doc_rows: dict[str, list[int]]


@dataclass
class _Embedded:
    """Base-model embeddings: every chunk (documents), every train query, every positive-text override."""

    chunks: np.ndarray
    queries: np.ndarray
    query_row: dict[str, int]
    overrides: np.ndarray | None
    override_row: dict[str, int]


@dataclass
class _Positive:
    """One positive of a pair: the chunk it comes from (row in the embedding matrix), its training text, the
    base-model cosine between the query and that text, and its relevance grade (1 when ungraded)."""

    row: int
    text: str
    score: float
    grade: int = 1


@dataclass
class _Positives:
    """Positives of every pair (``per_pair``, in pair order) and, per query text over all its pairs: the chunk rows
    that are never its negatives (``excluded``), the texts that are never its negatives (``texts``) and its best
    positive score (``best``)."""

    per_pair: list[list[_Positive]]
    excluded: dict[str, set[int]]
    texts: dict[str, set[str]]
    best: dict[str, float]


@dataclass
class MineStats:
    """Counters of one mining run (written to the manifest)."""

    examples: int = 0
    short_of_negatives: int = 0
    negatives_total: int = 0
    user_negatives: int = 0
    dropped_by_margin: int = 0
    positive_score_sum: float = 0.0
    mined_negative_score_sum: float = 0.0
    mined_negatives: int = 0


def run(chunks_dir: str | Path, pairs_dir: str | Path, out_dir: str | Path, cfg: MineConfig,
        base_model: str = DEFAULT_BASE_MODEL, model_cfg: ModelConfig | None = None) -> Manifest:
    """Mine hard negatives for the train-split pairs and write ``train.jsonl`` + base-model chunk embeddings.

    Args:
        chunks_dir: Artifact folder holding ``chunks.jsonl`` (ingest output).
        pairs_dir: Artifact folder holding ``pairs.jsonl`` (sdg output); only ``split == "train"`` pairs are used.
        out_dir: Output folder: ``train.jsonl``, ``embeddings.npy``, ``embedding_ids.json``, ``manifest.json``.
        cfg: Mining settings (``num_negatives``, ``margin``, ``candidates``, ``max_positives_per_pair``, ...).
        base_model: Model folder or id used to embed chunks and queries.
        model_cfg: How the base model becomes an embedder (the pipeline's ``model`` section, as train loads it).

    Returns:
        The written manifest (counts: train_pairs, examples, examples_short_of_negatives, negatives_total,
        dropped_by_margin, chunks_embedded, ...; ``policy``: the :class:`~embedforge.contracts.policy.MinedPolicy`).

    Raises:
        InputError: No chunks, no train pairs, a pair naming a chunk/document that is not in ``chunks.jsonl``, or
            the consistency filter dropped every pair.
    """
    from embedforge.retrieval.encode import load_model

    timer = StageTimer(STAGE)
    out = Path(out_dir)
    corpus = _read_corpus(chunks_dir)
    all_pairs = contracts.read_pairs(pairs_dir)
    pairs = _train_pairs(all_pairs, corpus, Path(pairs_dir) / contracts.PAIRS_FILE)

    model = load_model(base_model, model=model_cfg)
    log.info("mine: embedding %d chunks and %d train queries with %s", len(corpus.chunks), len(pairs), base_model)
    emb = _embed(model, corpus, pairs, cfg, out)
    positives = _resolve_all_positives(pairs, corpus, emb, cfg)
    scores, ids = _search(emb, positives, cfg, len(corpus.chunks))
    policies = policy.resolve(cfg)
    examples, stats, applied = _make_examples(pairs, corpus, emb.query_row, positives, scores, ids, policies, cfg)

    if not examples:
        raise InputError(
            f"mine: the consistency filter (mine.offline_consistency_rank={cfg.offline_consistency_rank}) dropped "
            f"all {len(pairs)} generated train pairs of {Path(pairs_dir) / contracts.PAIRS_FILE}; raise "
            "mine.offline_consistency_rank or set it to 0"
        )
    n_rows = contracts.write_jsonl(out / contracts.TRAIN_FILE, (e.to_columns() for e in examples))
    write_known_positives(out, positives.texts)  # all grades: never a negative in train's batches either
    if stats.short_of_negatives:
        log.warning(
            "mine: %d of %d examples have fewer negatives than their pair policy asks for (small corpus, or the "
            "margin %.2f dropped them)", stats.short_of_negatives, stats.examples, cfg.margin,
        )
    return timer.write_manifest(
        out,
        counts={
            "train_pairs": len(pairs),
            "pairs_ignored_not_train": len(all_pairs) - len(pairs),
            "examples": n_rows,
            "examples_short_of_negatives": stats.short_of_negatives,
            "negatives_total": stats.negatives_total,
            "user_negatives": stats.user_negatives,
            "dropped_by_margin": stats.dropped_by_margin,
            "pairs_dropped_by_consistency": sum(p.dropped_by_consistency for p in applied.kinds.values()),
            "offline_examples": applied.kinds["offline"].examples,
            "chunks_embedded": len(corpus.chunks),
        },
        inputs={"chunks": chunks_dir, "pairs": pairs_dir},
        config=cfg,
        base_model=base_model,
        embedding_dim=int(emb.chunks.shape[1]),
        mean_positive_score=round(stats.positive_score_sum / max(stats.examples, 1), 6),
        mean_negative_score=round(stats.mined_negative_score_sum / max(stats.mined_negatives, 1), 6),
        policy=applied,
    )


# ------------------------------------------------------------------------------------------------ phases
def _read_corpus(chunks_dir: str | Path) -> _Corpus:
    """Read the chunks (non-empty, unique ids) and index them by chunk id and by document."""
    path = Path(chunks_dir) / contracts.CHUNKS_FILE
    chunks = contracts.read_chunks(chunks_dir)
    if not chunks:
        raise InputError(f"{path} holds no chunks; run ingest on a non-empty corpus")
    chunk_row = {c.chunk_id: i for i, c in enumerate(chunks)}
    if len(chunk_row) != len(chunks):
        raise InputError(f"{path} repeats chunk ids; chunk_id must be unique")
    doc_rows: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        doc_rows.setdefault(c.doc_id, []).append(i)
    return _Corpus(chunks=chunks, chunk_row=chunk_row, doc_rows=doc_rows)


def _train_pairs(all_pairs: list[Pair], corpus: _Corpus, path: Path) -> list[Pair]:
    """The pairs of the train split, each checked to name only chunks and documents of the corpus."""
    pairs = [p for p in all_pairs if p.split == "train"]
    if not pairs:
        raise InputError(
            f"{path} holds no pairs with split 'train' ({len(all_pairs)} pairs in all); mining needs training pairs"
        )
    _check_references(pairs, corpus, path)
    return pairs


def _embed(model, corpus: _Corpus, pairs: list[Pair], cfg: MineConfig, out: Path) -> _Embedded:
    """Embed every chunk (saved to ``out`` for evaluate), every distinct train query and every positive-text
    override (e.g. inverse cloze: scored as itself, not as its source chunk)."""
    from embedforge.retrieval.encode import encode

    chunk_emb = encode(model, [c.text for c in corpus.chunks], kind="document", batch_size=cfg.batch_size,
                       show_progress=True, encoder=cfg.encode)
    out.mkdir(parents=True, exist_ok=True)
    _save_embeddings(out, chunk_emb, [c.chunk_id for c in corpus.chunks])
    queries = sorted({p.query for p in pairs})
    query_emb = encode(model, queries, kind="query", batch_size=cfg.batch_size, show_progress=True,
                       encoder=cfg.encode)
    overrides = sorted({p.positive_text for p in pairs if p.positive_text})
    override_emb = (encode(model, overrides, kind="document", batch_size=cfg.batch_size, encoder=cfg.encode)
                    if overrides else None)
    return _Embedded(chunks=chunk_emb, queries=query_emb, query_row={q: i for i, q in enumerate(queries)},
                     overrides=override_emb, override_row={t: i for i, t in enumerate(overrides)})


def _resolve_all_positives(pairs: list[Pair], corpus: _Corpus, emb: _Embedded, cfg: MineConfig) -> _Positives:
    """Positives of every pair; what is positive for a query text (in any of its pairs) is never its negative."""
    found, rewrites = _Positives(per_pair=[], excluded={}, texts={}, best={}), {}
    for pair in pairs:
        query_vec = emb.queries[emb.query_row[pair.query]]
        positives = _resolve_positives(pair, corpus, emb.chunks, query_vec, cfg)
        if pair.positive_text:
            vec = emb.overrides[emb.override_row[pair.positive_text]]
            positives = [_Positive(row=positives[0].row, text=pair.positive_text, score=float(vec @ query_vec))]
            rewrites.setdefault(positives[0].row, set()).add(pair.positive_text)
        found.per_pair.append(positives)
        rows = _excluded_rows(pair, corpus)
        found.excluded.setdefault(pair.query, set()).update(rows)
        found.texts.setdefault(pair.query, set()).update({p.text for p in positives} | {corpus.chunks[r].text for r in rows})
        found.best[pair.query] = max([found.best.get(pair.query, -1.0)] + [p.score for p in positives])
    add_rewrites(found.texts, found.excluded, rewrites)  # a rewritten relevant chunk is no in-batch negative either
    return found


def _search(emb: _Embedded, positives: _Positives, cfg: MineConfig, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest chunks of every query, deep enough that excluding the positive documents' own chunks still leaves
    ``cfg.candidates`` neighbours: (scores, chunk rows), one row per query."""
    from embedforge.retrieval.search import build_index, top_k

    k = min(n_chunks, cfg.candidates + max(len(rows) for rows in positives.excluded.values()))
    index = build_index(emb.chunks, use_gpu=cfg.use_gpu)
    return top_k(index, emb.queries, k)


def _make_examples(
    pairs: list[Pair],
    corpus: _Corpus,
    query_row: dict[str, int],
    positives: _Positives,
    scores: np.ndarray,
    ids: np.ndarray,
    policies: Mapping[PairKind, PairPolicy],
    cfg: MineConfig,
) -> tuple[list[TrainExample], MineStats, MinedPolicy]:
    """One example per positive of every pair its policy keeps, with user negatives then mined ones."""
    stats = MineStats()
    produced = {kind: Counter() for kind in policies}  # per kind: pairs, dropped_by_consistency, examples
    examples: list[TrainExample] = []
    augmenting = any(policy.kind_of(p.source) != "offline" for p in pairs)  # offline rows beside the user's pairs
    for pair, pair_positives in zip(pairs, positives.per_pair):
        kind = policy.kind_of(pair.source)
        rule, done = policies[kind], produced[kind]
        done["pairs"] += 1
        q = query_row[pair.query]
        not_negative = positives.texts[pair.query]
        candidates = _candidates(scores[q], ids[q], positives.excluded[pair.query], cfg.candidates)
        if rule.consistency_rank and positive_rank(candidates, positives.best[pair.query]) >= rule.consistency_rank:
            done["dropped_by_consistency"] += 1
            continue
        user_negs = _dedupe([n for n in pair.negatives if n not in not_negative and n != pair.query])
        candidates = candidates[cfg.skip_top:]  # after the consistency check, which ranks them all
        for pos in pair_positives:
            reference = pos.score if cfg.margin_reference == "positive" else positives.best[pair.query]
            negatives, dropped, mined_scores = _pick_negatives(
                candidates, corpus.chunks, reference, not_negative, user_negs, pair.query, cfg.margin, rule.num_negatives
            )
            examples.append(TrainExample(anchor=pair.query, positive=pos.text, negatives=negatives,
                                         grade=pos.grade, augment=augmenting and kind == "offline"))
            done["examples"] += 1
            stats.examples += 1
            stats.negatives_total += len(negatives)
            stats.user_negatives += len(user_negs)
            stats.short_of_negatives += int(len(negatives) < rule.num_negatives)
            stats.dropped_by_margin += dropped
            stats.positive_score_sum += pos.score
            stats.mined_negative_score_sum += float(sum(mined_scores))
            stats.mined_negatives += len(mined_scores)
    applied = {kind: AppliedPolicy(**rule.model_dump(), **produced[kind]) for kind, rule in policies.items()}
    return examples, stats, MinedPolicy(kinds=applied)


# ------------------------------------------------------------------------------------------------ helpers
def _check_references(pairs: list[Pair], corpus: _Corpus, path: Path) -> None:
    for p in pairs:
        missing_chunks = [c for c in p.positive_chunk_ids if c not in corpus.chunk_row]
        missing_docs = [d for d in p.positive_doc_ids if d not in corpus.doc_rows]
        if missing_chunks or missing_docs:
            raise InputError(
                f"{path}: pair {p.query_id!r} names positives that are not in chunks.jsonl "
                f"(chunk ids {missing_chunks[:3]}, doc ids {missing_docs[:3]}); re-run sdg on these chunks"
            )
        if p.relevance == "document" and not p.positive_doc_ids and not p.positive_chunk_ids:
            raise InputError(f"{path}: pair {p.query_id!r} has relevance 'document' but no positive_doc_ids")
        if p.relevance == "chunk" and not p.positive_chunk_ids:
            raise InputError(f"{path}: pair {p.query_id!r} has relevance 'chunk' but no positive_chunk_ids")


def _excluded_rows(pair: Pair, corpus: _Corpus) -> set[int]:
    """Every chunk of every positive document (its positive_doc_ids and the documents of its positive chunks):
    never a negative for this pair."""
    docs = list(pair.positive_doc_ids) + [corpus.chunks[corpus.chunk_row[c]].doc_id for c in pair.positive_chunk_ids]
    return {r for d in _dedupe(docs) for r in corpus.doc_rows[d]}


def _top_grade(pair: Pair, ids: list[str], grades: str = "top") -> list[str]:
    """The ids of the pair's highest relevance grade (all ids when the pair is ungraded or ``grades="all"``). Lower
    grades are neither positives nor negatives: their documents stay in :func:`_excluded_rows`."""
    if not pair.positive_grades or not ids or grades == "all":
        return ids
    top = max(pair.positive_grades.get(i, 1) for i in ids)
    return [i for i in ids if pair.positive_grades.get(i, 1) == top]


def _resolve_positives(pair: Pair, corpus: _Corpus, chunk_emb: np.ndarray, query_vec: np.ndarray, cfg: MineConfig) -> list[_Positive]:
    """The pair's positive chunks of the grades ``cfg.train_grades`` trains (for document relevance the best-scoring
    chunk of each positive document), distinct texts only, at most ``cfg.max_positives_per_pair``."""
    grade, trained = pair.positive_grades.get, cfg.train_grades
    if pair.relevance == "chunk" or not pair.positive_doc_ids:
        rows = [(corpus.chunk_row[c], grade(c, 1)) for c in _dedupe(_top_grade(pair, pair.positive_chunk_ids, trained))]
    else:  # document relevance: the best-scoring chunk of each positive document
        rows = []
        for d in _dedupe(_top_grade(pair, pair.positive_doc_ids, trained)):
            cand = corpus.doc_rows[d]
            rows.append((cand[int(np.argmax(chunk_emb[cand] @ query_vec))], grade(d, 1)))
    out: list[_Positive] = []
    seen: set[str] = set()
    for r, g in rows:
        text = corpus.chunks[r].text
        if text in seen:
            continue
        seen.add(text)
        out.append(_Positive(row=r, text=text, score=float(chunk_emb[r] @ query_vec), grade=g))
        if len(out) >= cfg.max_positives_per_pair:
            break
    return out


def positive_rank(candidates: list[tuple[int, float]], positive_score: float) -> int:
    """How many candidates (other documents' chunks, best first) the base model scores above the positive."""
    return sum(1 for _, s in candidates if s > positive_score)


def _candidates(scores: np.ndarray, ids: np.ndarray, excluded: set[int], limit: int) -> list[tuple[int, float]]:
    """The best ``limit`` neighbours (row, score) outside the excluded rows, best first."""
    out = []
    for s, i in zip(scores.tolist(), ids.tolist()):
        if i < 0 or i in excluded:
            continue
        out.append((i, s))
        if len(out) >= limit:
            break
    return out


def _pick_negatives(candidates: list[tuple[int, float]], chunks: list[Chunk], positive_score: float,
                    positive_texts: set[str], user_negatives: list[str], query: str, margin: float,
                    wanted: int) -> tuple[list[str], int, list[float]]:
    """User negatives first, then the best mined candidates under ``margin x positive_score``, up to ``wanted``.

    Returns:
        (negative texts, candidates dropped by the margin, scores of the mined negatives kept).
    """
    negatives = list(user_negatives)
    taken = set(negatives)
    threshold = margin * positive_score if margin > 0 else float("inf")
    dropped = 0
    mined_scores: list[float] = []
    for row, score in candidates:
        if len(negatives) >= wanted:
            break
        text = chunks[row].text
        if text in taken or text in positive_texts or text == query:
            continue
        if score > threshold:
            dropped += 1
            continue
        negatives.append(text)
        taken.add(text)
        mined_scores.append(score)
    return negatives, dropped, mined_scores


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _save_embeddings(out: Path, emb: np.ndarray, ids: list[str]) -> None:
    tmp = out / f".{contracts.EMBEDDINGS_FILE}.tmp.npy"
    np.save(tmp, np.ascontiguousarray(emb, dtype=np.float32))
    tmp.replace(out / contracts.EMBEDDINGS_FILE)
    contracts.atomic_write_text(out / contracts.EMBEDDING_IDS_FILE, json.dumps(ids) + "\n")

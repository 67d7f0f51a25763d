"""Hard-negative mining: (query, positive) pairs -> ``anchor, positive, negative_1..n`` training rows.

Steps:

1. Embed every chunk once as a document with the base model and save the matrix (``embeddings.npy`` +
   ``embedding_ids.json``, chunk ids in row order) so evaluation can reuse it for the base model.
2. Embed the train-split queries (query prompt) and search the chunks with an exact FAISS inner-product index.
3. For each pair, resolve its positives: the listed ``positive_chunk_ids`` (one example each, at most
   ``max_positives_per_pair``), or for ``relevance="document"`` the chunk of each positive document that the
   base model scores highest for the query. The positive's text is ``pair.positive_text`` when set (a single
   example, e.g. an inverse-cloze positive), else the chunk's text.
4. Negatives: the pair's user-supplied ``negatives`` first, then mined ones, best first, from the top
   ``candidates`` neighbours that survive three filters:

   - never a chunk of any positive document of the pair (a positive's own document is never a negative);
   - never a text equal to a positive of the pair;
   - the positive-aware margin of NV-Retriever ("TopK-PercPos", Moreira et al. 2024): drop a candidate whose
     score exceeds ``margin x positive score`` — such near-duplicates of the positive are likely false negatives.
     The reference score is the query's best positive (``margin_reference="best_positive"``, default) or each
     example's own positive (``"positive"``); they differ only for queries with several positives, where the
     per-example reference hands weakly-scored positives only easy negatives (measured worse, see
     ``bench/train_quality.py``).

   Everything positive for a query text in any of its pairs (chunks of its positive documents, its positive texts)
   is excluded, so two pairs with the same query never make each other's positives negatives.

Offline-generator pairs (``source`` ``offline/*``) are handled conservatively: a round-trip consistency filter
keeps one only if at most ``offline_consistency_rank - 1`` chunks of other documents outscore its positive, and it
gets ``offline_num_negatives`` (default 0) mined negatives — a synthetic query's nearest neighbours are mostly
relevant too (measured in ``bench/offline_sdg_quality.py``). Bring-your-own and LLM pairs get ``num_negatives``.

Scores are base-model cosines (embeddings are L2-normalised). The output is deterministic for fixed inputs.

References:
    Moreira et al. 2024, "NV-Retriever: Improving text embedding models with effective hard-negative mining",
    https://arxiv.org/abs/2407.15831
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedforge import contracts
from embedforge.config import DEFAULT_BASE_MODEL, MineConfig
from embedforge.contracts import Chunk, Manifest, Pair, StageTimer, TrainExample
from embedforge.errors import InputError
from embedforge.sdg.offline import is_offline_pair

log = logging.getLogger(__name__)

STAGE = "mine"


@dataclass
class _Positive:
    """One positive of a pair: the chunk it comes from (row in the embedding matrix), its training text and the
    base-model cosine between the query and that text."""

    row: int
    text: str
    score: float


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
    dropped_by_consistency: int = 0
    offline_examples: int = 0


def run(
    chunks_dir: str | Path,
    pairs_dir: str | Path,
    out_dir: str | Path,
    cfg: MineConfig,
    base_model: str = DEFAULT_BASE_MODEL,
) -> Manifest:
    """Mine hard negatives for the train-split pairs and write ``train.jsonl`` + base-model chunk embeddings.

    Args:
        chunks_dir: Artifact folder holding ``chunks.jsonl`` (ingest output).
        pairs_dir: Artifact folder holding ``pairs.jsonl`` (sdg output); only ``split == "train"`` pairs are used.
        out_dir: Output folder: ``train.jsonl``, ``embeddings.npy``, ``embedding_ids.json``, ``manifest.json``.
        cfg: Mining settings (``num_negatives``, ``margin``, ``candidates``, ``max_positives_per_pair``, ...).
        base_model: Model folder or id used to embed chunks and queries.

    Returns:
        The written manifest (counts: train_pairs, examples, examples_short_of_negatives, negatives_total,
        dropped_by_margin, chunks_embedded, ...).

    Raises:
        InputError: No chunks, no train pairs, or a pair naming a chunk/document that is not in ``chunks.jsonl``.
    """
    from embedforge.encode import encode, load_model
    from embedforge.search import build_index, top_k

    timer = StageTimer(STAGE)
    out = Path(out_dir)
    chunks = contracts.read_chunks(chunks_dir)
    if not chunks:
        raise InputError(f"{Path(chunks_dir) / contracts.CHUNKS_FILE} holds no chunks; run ingest on a non-empty corpus")
    all_pairs = contracts.read_pairs(pairs_dir)
    pairs = [p for p in all_pairs if p.split == "train"]
    if not pairs:
        raise InputError(
            f"{Path(pairs_dir) / contracts.PAIRS_FILE} holds no pairs with split 'train' "
            f"({len(all_pairs)} pairs in all); mining needs training pairs"
        )
    chunk_row = {c.chunk_id: i for i, c in enumerate(chunks)}
    if len(chunk_row) != len(chunks):
        raise InputError(f"{Path(chunks_dir) / contracts.CHUNKS_FILE} repeats chunk ids; chunk_id must be unique")
    doc_rows: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        doc_rows.setdefault(c.doc_id, []).append(i)
    _check_references(pairs, chunk_row, doc_rows, Path(pairs_dir) / contracts.PAIRS_FILE)

    model = load_model(base_model)
    log.info("mine: embedding %d chunks and %d train queries with %s", len(chunks), len(pairs), base_model)
    chunk_emb = encode(model, [c.text for c in chunks], kind="document", batch_size=cfg.batch_size, show_progress=True)
    out.mkdir(parents=True, exist_ok=True)
    _save_embeddings(out, chunk_emb, [c.chunk_id for c in chunks])

    queries = sorted({p.query for p in pairs})
    query_row = {q: i for i, q in enumerate(queries)}
    query_emb = encode(model, queries, kind="query", batch_size=cfg.batch_size, show_progress=True)
    # Positive-text overrides (e.g. inverse cloze) are scored as themselves, not as their source chunk.
    overrides = sorted({p.positive_text for p in pairs if p.positive_text})
    override_emb = encode(model, overrides, kind="document", batch_size=cfg.batch_size) if overrides else None
    override_row = {t: i for i, t in enumerate(overrides)}

    # Positives of every pair; what is positive for a query text (in any of its pairs) is never its negative.
    resolved: list[list[_Positive]] = []
    excluded: dict[str, set[int]] = {}
    positive_texts: dict[str, set[str]] = {}
    for pair in pairs:
        q = query_row[pair.query]
        positives = _resolve_positives(pair, chunks, chunk_row, doc_rows, chunk_emb, query_emb[q], cfg)
        if pair.positive_text:
            vec = override_emb[override_row[pair.positive_text]]
            positives = [_Positive(row=positives[0].row, text=pair.positive_text, score=float(vec @ query_emb[q]))]
        resolved.append(positives)
        rows = _excluded_rows(pair, chunks, chunk_row, doc_rows)
        excluded.setdefault(pair.query, set()).update(rows)
        positive_texts.setdefault(pair.query, set()).update({p.text for p in positives} | {chunks[r].text for r in rows})

    # Search deep enough that excluding the positive documents' own chunks still leaves `candidates` neighbours.
    k = min(len(chunks), cfg.candidates + max(len(rows) for rows in excluded.values()))
    index = build_index(chunk_emb, use_gpu=cfg.use_gpu)
    scores, ids = top_k(index, query_emb, k)

    best_positive: dict[str, float] = {}
    for pair, positives in zip(pairs, resolved):
        best_positive[pair.query] = max([best_positive.get(pair.query, -1.0)] + [p.score for p in positives])

    stats = MineStats()
    examples: list[TrainExample] = []
    for pair, positives in zip(pairs, resolved):
        q = query_row[pair.query]
        not_negative = positive_texts[pair.query]
        candidates = _candidates(scores[q], ids[q], excluded[pair.query], cfg.candidates)
        offline = is_offline_pair(pair)
        if offline and cfg.offline_consistency_rank:
            ahead = positive_rank(candidates, best_positive[pair.query])
            if ahead >= cfg.offline_consistency_rank:
                stats.dropped_by_consistency += 1
                continue
        wanted = cfg.offline_num_negatives if offline else cfg.num_negatives
        user_negs = _dedupe([n for n in pair.negatives if n not in not_negative and n != pair.query])
        for pos in positives:
            reference = pos.score if cfg.margin_reference == "positive" else best_positive[pair.query]
            negatives, dropped, mined_scores = _pick_negatives(
                candidates, chunks, reference, not_negative, user_negs, pair.query, cfg.margin, wanted
            )
            examples.append(TrainExample(anchor=pair.query, positive=pos.text, negatives=negatives))
            stats.examples += 1
            stats.offline_examples += offline
            stats.negatives_total += len(negatives)
            stats.user_negatives += len(user_negs)
            stats.short_of_negatives += int(len(negatives) < wanted)
            stats.dropped_by_margin += dropped
            stats.positive_score_sum += pos.score
            stats.mined_negative_score_sum += float(sum(mined_scores))
            stats.mined_negatives += len(mined_scores)

    if not examples:
        raise InputError(
            f"mine: the consistency filter (mine.offline_consistency_rank={cfg.offline_consistency_rank}) dropped "
            f"all {len(pairs)} generated train pairs of {Path(pairs_dir) / contracts.PAIRS_FILE}; raise "
            "mine.offline_consistency_rank or set it to 0"
        )
    n_rows = contracts.write_jsonl(out / contracts.TRAIN_FILE, (e.to_columns() for e in examples))
    if stats.short_of_negatives:
        log.warning(
            "mine: %d of %d examples have fewer than %d negatives (small corpus, or the margin %.2f dropped them)",
            stats.short_of_negatives, stats.examples, cfg.num_negatives, cfg.margin,
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
            "pairs_dropped_by_consistency": stats.dropped_by_consistency,
            "offline_examples": stats.offline_examples,
            "chunks_embedded": len(chunks),
        },
        inputs={"chunks": chunks_dir, "pairs": pairs_dir},
        config=cfg,
        base_model=base_model,
        embedding_dim=int(chunk_emb.shape[1]),
        mean_positive_score=round(stats.positive_score_sum / max(stats.examples, 1), 6),
        mean_negative_score=round(stats.mined_negative_score_sum / max(stats.mined_negatives, 1), 6),
    )


# ------------------------------------------------------------------------------------------------ helpers
def _check_references(pairs: list[Pair], chunk_row: dict[str, int], doc_rows: dict[str, list[int]], path: Path) -> None:
    for p in pairs:
        missing_chunks = [c for c in p.positive_chunk_ids if c not in chunk_row]
        missing_docs = [d for d in p.positive_doc_ids if d not in doc_rows]
        if missing_chunks or missing_docs:
            raise InputError(
                f"{path}: pair {p.query_id!r} names positives that are not in chunks.jsonl "
                f"(chunk ids {missing_chunks[:3]}, doc ids {missing_docs[:3]}); re-run sdg on these chunks"
            )
        if p.relevance == "document" and not p.positive_doc_ids and not p.positive_chunk_ids:
            raise InputError(f"{path}: pair {p.query_id!r} has relevance 'document' but no positive_doc_ids")
        if p.relevance == "chunk" and not p.positive_chunk_ids:
            raise InputError(f"{path}: pair {p.query_id!r} has relevance 'chunk' but no positive_chunk_ids")


def _positive_docs(pair: Pair, chunks: list[Chunk], chunk_row: dict[str, int]) -> list[str]:
    """Positive documents of a pair, in order: its positive_doc_ids, then the documents of its positive chunks."""
    docs = list(pair.positive_doc_ids) + [chunks[chunk_row[c]].doc_id for c in pair.positive_chunk_ids]
    return _dedupe(docs)


def _excluded_rows(pair: Pair, chunks: list[Chunk], chunk_row: dict[str, int], doc_rows: dict[str, list[int]]) -> set[int]:
    """Every chunk of every positive document: never a negative for this pair."""
    return {r for d in _positive_docs(pair, chunks, chunk_row) for r in doc_rows[d]}


def _resolve_positives(
    pair: Pair,
    chunks: list[Chunk],
    chunk_row: dict[str, int],
    doc_rows: dict[str, list[int]],
    chunk_emb: np.ndarray,
    query_vec: np.ndarray,
    cfg: MineConfig,
) -> list[_Positive]:
    if pair.relevance == "chunk" or not pair.positive_doc_ids:
        rows = [chunk_row[c] for c in _dedupe(pair.positive_chunk_ids)]
    else:  # document relevance: the best-scoring chunk of each positive document
        rows = []
        for d in _dedupe(pair.positive_doc_ids):
            cand = doc_rows[d]
            rows.append(cand[int(np.argmax(chunk_emb[cand] @ query_vec))])
    out: list[_Positive] = []
    seen: set[str] = set()
    for r in rows:
        text = chunks[r].text
        if text in seen:
            continue
        seen.add(text)
        out.append(_Positive(row=r, text=text, score=float(chunk_emb[r] @ query_vec)))
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


def _pick_negatives(
    candidates: list[tuple[int, float]],
    chunks: list[Chunk],
    positive_score: float,
    positive_texts: set[str],
    user_negatives: list[str],
    query: str,
    margin: float,
    wanted: int,
) -> tuple[list[str], int, list[float]]:
    """User negatives first, then the best mined candidates under ``margin x positive_score``, up to ``wanted``.

    Returns:
        (negative texts, candidates dropped by the margin, scores of the mined negatives kept).
    """
    negatives = list(user_negatives)
    taken = set(negatives)
    threshold = margin * positive_score
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


def load_embeddings(mined_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read the base-model chunk embeddings saved by :func:`run`.

    Args:
        mined_dir: A mine artifact folder.

    Returns:
        (float32 matrix (n, dim), chunk ids in row order).

    Raises:
        InputError: The files are missing or disagree in length.
    """
    d = Path(mined_dir)
    path = d / contracts.EMBEDDINGS_FILE
    if not path.is_file():
        raise InputError(f"{path} does not exist; run the mine stage first")
    emb = np.load(path)
    ids = contracts.read_json(d / contracts.EMBEDDING_IDS_FILE)
    if len(ids) != emb.shape[0]:
        raise InputError(f"{path} has {emb.shape[0]} rows but {contracts.EMBEDDING_IDS_FILE} lists {len(ids)} ids")
    return emb, ids

"""SDG stage: query/positive pairs for training and evaluation, from a generator or a user's pairs file.

* ``pairs_file`` given -> bring-your-own pairs (:mod:`embedforge.stages.sdg.byo`), resolved against the chunks, and
  with ``sdg.augment`` > 0 offline pairs of the train documents beside them (:mod:`embedforge.stages.sdg.augment`);
* otherwise the generator named by ``SdgConfig.generator`` (:func:`make_generator`: ``offline`` or ``llm``) runs
  once per split: train chunks -> train pairs, eval chunks -> eval pairs, so no pair mixes splits.

``max_pairs`` is shared between the splits in proportion to their chunk counts (at least one eval pair when there
are eval chunks); generated eval pairs whose query also appears in train are dropped. Output: ``pairs.jsonl`` +
``manifest.json`` (counts: pairs, train_pairs, eval_pairs, ``source_<name>`` per source, for a pairs file
``pairs_file_rows``, ``duplicate_queries_merged`` and ``augment_pairs``, plus the generator's ``stats()`` as ``gen_<name>``).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from embedforge.config import DEFAULT_BASE_MODEL, ModelConfig, SdgConfig
from embedforge.contracts import (
    PAIRS_FILE,
    Manifest,
    Pair,
    StageTimer,
    read_chunks,
    write_jsonl,
)
from embedforge.errors import InputError
from embedforge.names import for_count
from embedforge.retrieval.text import query_key
from embedforge.stages.sdg.augment import augment_pairs
from embedforge.stages.sdg.base import PairGenerator
from embedforge.stages.sdg.byo import (
    load_pairs,
    pairs_from_beir_qrels,
    write_pairs_file,
)
from embedforge.stages.sdg.offline import OfflineGenerator

__all__ = ["run", "make_generator", "split_budgets", "pairs_from_beir_qrels", "write_pairs_file", "load_pairs"]

log = logging.getLogger(__name__)


def make_generator(cfg: SdgConfig, model_cfg: ModelConfig | None = None) -> PairGenerator:
    """The generator named by ``cfg.generator``: ``offline`` (:class:`~embedforge.stages.sdg.offline.OfflineGenerator`)
    or ``llm`` (:class:`~embedforge.stages.sdg.llm.LlmGenerator`, imported only when asked for). Bring-your-own pairs
    need no generator (:func:`~embedforge.stages.sdg.byo.load_pairs`). ``model_cfg``: how the LLM generator's
    de-duplication model is loaded (the pipeline's ``model`` section when that model is the base model)."""
    if cfg.generator == "offline":
        return OfflineGenerator(cfg)
    if cfg.generator == "llm":
        from embedforge.stages.sdg.llm import LlmGenerator

        return LlmGenerator(cfg, model_cfg)
    raise ValueError(f"unknown sdg.generator {cfg.generator!r}; known: offline, llm")


def split_budgets(max_pairs: int, train_chunks: int, eval_chunks: int) -> dict[str, int]:
    """Share ``max_pairs`` between the splits in proportion to their chunks.

    Args:
        max_pairs: Total cap.
        train_chunks: Chunks of the train split.
        eval_chunks: Chunks of the eval split.

    Returns:
        {"train": n, "eval": m} with n + m == max_pairs; eval gets >= 1 when it has chunks and max_pairs >= 2.
    """
    total = train_chunks + eval_chunks
    if total == 0:
        return {"train": 0, "eval": 0}
    ev = round(max_pairs * eval_chunks / total)
    if eval_chunks and ev == 0 and max_pairs >= 2:
        ev = 1
    if train_chunks and ev == max_pairs and max_pairs >= 2:
        ev = max_pairs - 1
    return {"train": max_pairs - ev, "eval": ev}


def _generate(chunks_dir: Path, cfg: SdgConfig, model_cfg: ModelConfig | None = None
              ) -> tuple[list[Pair], dict[str, int | float]]:
    chunks = read_chunks(chunks_dir)
    if not chunks:
        raise InputError(f"{chunks_dir / 'chunks.jsonl'} holds no chunks; re-run ingest on a non-empty corpus")
    by_split = {s: [c for c in chunks if c.split == s] for s in ("train", "eval")}
    budgets = split_budgets(cfg.max_pairs, len(by_split["train"]), len(by_split["eval"]))
    gen = make_generator(cfg, model_cfg)
    pairs: list[Pair] = []
    extra: dict[str, int] = {"cross_split_duplicate_queries_dropped": 0, "pairs_over_split_budget_dropped": 0}
    train_queries: set[str] = set()
    for split in ("train", "eval"):
        if not by_split[split] or budgets[split] == 0:
            continue
        out = gen.generate(by_split[split], split, max_pairs=budgets[split])
        bad = [p.query_id for p in out if p.split != split]
        if bad:
            raise RuntimeError(f"generator {cfg.generator!r} returned pairs of another split than {split!r}: {bad[:3]}")
        if split == "train":
            train_queries = {query_key(p.query) for p in out}
        else:
            kept = [p for p in out if query_key(p.query) not in train_queries]
            extra["cross_split_duplicate_queries_dropped"] += len(out) - len(kept)
            out = kept
        if len(out) > budgets[split]:
            extra["pairs_over_split_budget_dropped"] += len(out) - budgets[split]
            out = out[:budgets[split]]
        pairs.extend(out)
    stats = {**gen.stats(), **extra}
    return pairs, stats


def run(
    chunks_dir: str | Path,
    out_dir: str | Path,
    cfg: SdgConfig,
    pairs_file: str | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    model_cfg: ModelConfig | None = None,
) -> Manifest:
    """Produce ``pairs.jsonl`` (+ ``manifest.json``) from chunks.

    Args:
        chunks_dir: Ingest artifact folder (``chunks.jsonl``).
        out_dir: Output artifact folder (created).
        cfg: SDG settings (generator, offline ICT/title knobs, max_pairs, seed; ``llm`` for the LLM generator).
        pairs_file: A bring-your-own pairs JSONL; empty/None -> generate.
        base_model: The pipeline's base model (the LLM generator may use it for semantic de-duplication).

    Returns:
        The manifest; counts: pairs, train_pairs, eval_pairs, source_<source>, and generator/BYO statistics
        prefixed ``gen_``.

    Raises:
        InputError: no chunks, or a malformed pairs file.
    """
    timer = StageTimer("sdg")
    chunks_dir, out = Path(chunks_dir), Path(out_dir)
    if pairs_file:
        chunks = read_chunks(chunks_dir)
        pairs, stats = load_pairs(pairs_file, chunks, split_policy=cfg.byo_split)
        extra, augment_stats = augment_pairs(pairs, chunks, cfg)  # sdg.augment: offline rows beside the user's
        pairs, stats = pairs + extra, {**stats, **augment_stats}
        mode = "byo"
    else:
        if cfg.generator == "llm":
            from embedforge.stages.sdg.llm.preflight import preflight

            preflight(cfg.llm)  # key, endpoint and model checked in seconds, before any document
        if cfg.generator == "llm" and "dedup_model" not in cfg.llm.model_fields_set:
            cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"dedup_model": base_model})})
        dedup_is_base = cfg.generator == "llm" and cfg.llm.dedup_model == base_model
        pairs, stats = _generate(chunks_dir, cfg, model_cfg if dedup_is_base else None)
        mode = cfg.generator
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PAIRS_FILE, pairs)
    counts: dict[str, int] = {
        "pairs": len(pairs),
        "train_pairs": sum(1 for p in pairs if p.split == "train"),
        "eval_pairs": sum(1 for p in pairs if p.split == "eval"),
    }
    if pairs_file:  # what the user's file held and how many of its lines were merged into an earlier query
        counts.update(pairs_file_rows=stats["lines"], duplicate_queries_merged=stats["duplicate_queries_merged"],
                      augment_pairs=stats["augment_pairs"])
    for source, n in sorted(Counter(p.source for p in pairs).items()):
        counts[f"source_{for_count(source)}"] = n
    for k, v in stats.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer():
            counts[f"gen_{for_count(k)}"] = int(v)  # non-integer statistics stay in generator_stats
    log.info("sdg (%s): %s", mode, counts)
    inputs = {"chunks": str(chunks_dir)}
    if pairs_file:
        inputs["pairs_file"] = str(pairs_file)
    return timer.write_manifest(out, counts=counts, inputs=inputs, config=cfg, mode=mode,
                                generator_stats=stats, base_model=base_model)

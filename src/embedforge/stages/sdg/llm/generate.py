"""The four stages of the LLM SDG recipe for one document (or bundle of documents), the plan of units, and the
assembly of finished units into :class:`~embedforge.contracts.Pair` records.

A *unit* is what one prompt sees: a window of at most ``max_segments`` consecutive chunks of one document, or
(``bundle_size`` 2–3) windows of 2–3 different documents, so multi-hop questions can span documents. Units are
planned once per split and saved (``plan.json``), so a resumed run processes exactly the same units.

Per unit: (1) artifact extraction, (2) QA generation from the numbered segments and the artifacts,
(3) semantic dedup of the questions (cosine of the dedup model's embeddings), (4) the LLM judge scoring each
surviving pair. The unit's record keeps every judged pair with its scores; the judge threshold and a second,
cross-unit dedup are applied when pairs are assembled, so changing ``judge_threshold`` needs no new requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedforge.contracts import Pair
from embedforge.stages.sdg.llm.backends import RequestError
from embedforge.stages.sdg.llm.client import LlmClient, StructuredOutputError, Usage
from embedforge.stages.sdg.llm.prompts import render_segments
from embedforge.stages.sdg.llm.schemas import Artifacts, Judgement, QAPair, QAResponse

if TYPE_CHECKING:
    from embedforge.config import EncodeConfig, LlmSdgConfig, ModelConfig
    from embedforge.contracts import Chunk, Split

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ embedder
class Embedder:
    """The dedup/bundling embedding model (``embedforge.retrieval.encode``), loaded lazily, one encode at a time."""

    def __init__(self, model_name: str, model_cfg: ModelConfig | None = None, encoder: EncodeConfig | None = None):
        self.model_name = model_name
        self.model_cfg = model_cfg
        self.encoder = encoder  # on a CPU: ONNX Runtime where it pays (embedforge.retrieval.encode)
        self._lock = threading.Lock()

    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray:
        from embedforge.retrieval.encode import encode, load_model

        with self._lock:
            model = load_model(self.model_name, model=self.model_cfg)
            return encode(model, texts, kind=kind, encoder=self.encoder)  # type: ignore[arg-type]


def greedy_dedup(emb: np.ndarray, threshold: float, keep_against: np.ndarray | None = None) -> list[bool]:
    """Keep row i unless its cosine with an earlier kept row (or any row of ``keep_against``) exceeds ``threshold``."""
    keep: list[bool] = []
    kept: list[np.ndarray] = [] if keep_against is None else list(keep_against)
    for v in emb:
        dup = bool(kept) and float(np.max(np.stack(kept) @ v)) > threshold
        keep.append(not dup)
        if not dup:
            kept.append(v)
    return keep


# -------------------------------------------------------------------------------------------------- units
@dataclass
class Unit:
    unit_id: str
    chunks: list[Chunk]

    @property
    def doc_ids(self) -> list[str]:
        return list(dict.fromkeys(c.doc_id for c in self.chunks))

    @property
    def chunk_ids(self) -> list[str]:
        return [c.chunk_id for c in self.chunks]


def unit_id_for(chunks: list[Chunk]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(f"{c.chunk_id}\x00{hashlib.sha256(c.text.encode()).hexdigest()}\n".encode())
    return h.hexdigest()[:20]


def chunks_fingerprint(chunks: list[Chunk]) -> str:
    """Hash of a split's chunk ids and texts (order-independent)."""
    h = hashlib.sha256()
    for c in sorted(chunks, key=lambda c: c.chunk_id):
        h.update(f"{c.chunk_id}\x00{c.text}\x00{c.title}\n".encode())
    return h.hexdigest()


def _windows(doc_chunks: list[Chunk], size: int) -> list[list[Chunk]]:
    n = max(1, -(-len(doc_chunks) // size))  # ceil
    step = -(-len(doc_chunks) // n)  # balanced windows, none larger than size
    return [doc_chunks[i:i + step] for i in range(0, len(doc_chunks), step)]


def plan_units(chunks: list[Chunk], cfg: LlmSdgConfig, embedder: Embedder | None, seed: int) -> list[Unit]:
    """Windows of each document, bundled across documents when ``bundle_size`` > 1; deterministic."""
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    size = max(1, cfg.max_segments // cfg.bundle_size)
    windows: list[list[Chunk]] = []
    for doc_id in sorted(by_doc):
        windows.extend(_windows(sorted(by_doc[doc_id], key=lambda c: c.position), size))
    groups: list[list[int]]
    if cfg.bundle_size == 1 or len(by_doc) < 2:
        groups = [[i] for i in range(len(windows))]
    elif cfg.bundle_strategy == "random":
        order = list(range(len(windows)))
        random.Random(seed).shuffle(order)
        groups = _group(order, windows, cfg.bundle_size, None)
    else:
        assert embedder is not None
        chunk_emb = embedder.encode([c.text for c in chunks], kind="document")
        index = {c.chunk_id: i for i, c in enumerate(chunks)}
        win_emb = np.stack([chunk_emb[[index[c.chunk_id] for c in w]].mean(axis=0) for w in windows])
        win_emb /= np.linalg.norm(win_emb, axis=1, keepdims=True) + 1e-12
        groups = _group(list(range(len(windows))), windows, cfg.bundle_size, win_emb)
    units = []
    for g in groups:
        unit_chunks = [c for i in g for c in windows[i]]
        units.append(Unit(unit_id_for(unit_chunks), unit_chunks))
    return units


def _group(order: list[int], windows: list[list[Chunk]], size: int, emb: np.ndarray | None) -> list[list[int]]:
    """Greedy bundles of ``size`` windows of distinct documents (nearest first when ``emb`` is given)."""
    free = list(order)
    groups = []
    while free:
        seed_i = free.pop(0)
        group = [seed_i]
        docs = {windows[seed_i][0].doc_id}
        candidates = [i for i in free if windows[i][0].doc_id not in docs]
        if emb is not None:
            candidates.sort(key=lambda i: -float(emb[i] @ emb[seed_i]))
        for i in candidates:
            if len(group) == size:
                break
            if windows[i][0].doc_id in docs:
                continue
            group.append(i)
            docs.add(windows[i][0].doc_id)
            free.remove(i)
        groups.append(group)
    return groups


# ---------------------------------------------------------------------------------------- unit processing
class UnitProcessor:
    """Runs the four stages on one unit and returns its result record (raises on a unit failure)."""

    def __init__(self, cfg: LlmSdgConfig, client: LlmClient, embedder: Embedder):
        self.cfg = cfg
        self.client = client
        self.prompts = client.prompts
        self.embedder = embedder

    async def run(self, unit: Unit) -> dict[str, Any]:
        """The unit's result record; a :class:`RequestError` carries ``.stage`` (where it failed)."""
        where = {"stage": "artifacts"}  # per call: units run concurrently on one processor
        try:
            return await self._run(unit, where)
        except RequestError as exc:
            exc.stage = where["stage"]
            raise

    async def _run(self, unit: Unit, where: dict[str, str]) -> dict[str, Any]:
        cfg = self.cfg
        usage = Usage()
        started = time.time()
        segments = render_segments(unit.chunks)
        n = len(unit.chunks)

        # 1. artifacts
        artifacts = await self.client.structured(
            "artifacts", self.prompts.artifacts_messages(segments, cfg.max_artifacts_per_type), Artifacts,
            context={"max_items": cfg.max_artifacts_per_type}, usage=usage)
        assert isinstance(artifacts, Artifacts)
        artifacts = artifacts.truncated(cfg.max_artifacts_per_type)

        # 2. QA generation
        where["stage"] = "qa"
        counts = {t: c for t, c in cfg.query_type_counts.items() if c > 0}
        context = {"n_segments": n, "query_types": sorted(counts), "max_pairs": cfg.num_pairs,
                   "max_hops": cfg.max_hops, "reasoning_types": [
                       r.strip().lower().replace("-", "_").replace(" ", "_") for r in cfg.reasoning_types]}
        qa = await self.client.structured(
            "qa", self.prompts.qa_messages(segments, artifacts.model_dump_json(), counts, cfg.reasoning_types,
                                           cfg.min_complexity, cfg.max_hops, n_segments=n),
            QAResponse, context=context, usage=usage)
        assert isinstance(qa, QAResponse)
        dropped: list[dict[str, Any]] = []
        pairs: list[QAPair] = []
        for p in qa.pairs[: cfg.num_pairs]:
            p = p.normalised(cfg.max_hops)
            if p.question_complexity < cfg.min_complexity:
                dropped.append({"question": p.question, "reason": "complexity"})
            else:
                pairs.append(p)
        extra = len(qa.pairs) - cfg.num_pairs
        if extra > 0:
            dropped.extend({"question": p.question, "reason": "surplus"} for p in qa.pairs[cfg.num_pairs:])

        # 3. semantic dedup within the unit
        if pairs:
            emb = await asyncio.to_thread(self.embedder.encode, [p.question for p in pairs])
            keep = greedy_dedup(emb, cfg.dedup_threshold)
            dropped.extend({"question": p.question, "reason": "duplicate"} for p, k in zip(pairs, keep) if not k)
            pairs = [p for p, k in zip(pairs, keep) if k]

        # 4. judge
        where["stage"] = "judge"
        judged: list[dict[str, Any]] = []
        judgements: list[Judgement | StructuredOutputError | None]
        if cfg.judge_enabled and pairs:
            judgements = list(await asyncio.gather(*(self._judge(unit, p, usage) for p in pairs)))
        else:
            judgements = [None] * len(pairs)
        for p, j in zip(pairs, judgements):
            if isinstance(j, StructuredOutputError):
                dropped.append({"question": p.question, "reason": "judge_invalid", "error": str(j)[:300]})
                continue
            row = p.model_dump(mode="json")
            row["judge"] = j.scores() if j is not None else None
            row["judge_rationale"] = j.rationale if j is not None else ""
            row["quality_score"] = float(j.overall) if j is not None else None
            judged.append(row)
        return {
            "unit_id": unit.unit_id, "status": "ok", "doc_ids": unit.doc_ids, "chunk_ids": unit.chunk_ids,
            "generator_model": self.client.settings["qa"].model, "judge_model": self.client.settings["judge"].model,
            "prompt_version": self.prompts.version, "artifacts": artifacts.model_dump(mode="json"),
            "generated": len(qa.pairs), "pairs": judged, "dropped": dropped, "usage": usage.tokens,
            "seconds": round(time.time() - started, 3), "finished_at": time.time(),
        }

    async def _judge(self, unit: Unit, p: QAPair, usage: Usage) -> Judgement | StructuredOutputError:
        cited = [unit.chunks[i - 1] for i in p.segment_ids]
        seg_text = "\n".join(f"Segment {i}: {' '.join(c.text.split())}" for i, c in zip(p.segment_ids, cited))
        try:
            j = await self.client.structured(
                "judge", self.prompts.judge_messages(p.question, p.answer, seg_text), Judgement, usage=usage)
        except StructuredOutputError as exc:  # the pair is dropped and counted; transport errors fail the unit
            return exc
        assert isinstance(j, Judgement)
        return j


# ------------------------------------------------------------------------------------------------ assembly
def assemble_pairs(
    records: list[dict[str, Any]],
    units: list[Unit],
    cfg: LlmSdgConfig,
    split: Split,
    embedder: Embedder,
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs of finished units (in plan order): judge threshold, then cross-unit dedup. Returns pairs + counters."""
    by_id = {u.unit_id: u for u in units}
    counters = {"llm.pairs_generated": 0, "llm.dropped.complexity": 0, "llm.dropped.duplicate": 0,
                "llm.dropped.judge": 0, "llm.dropped.judge_invalid": 0, "llm.dropped.surplus": 0}
    candidates: list[tuple[dict[str, Any], dict[str, Any], Unit]] = []
    for rec in records:
        unit = by_id[rec["unit_id"]]
        counters["llm.pairs_generated"] += int(rec.get("generated", 0))
        for d in rec.get("dropped", []):
            key = f"llm.dropped.{d.get('reason', 'other')}"
            counters[key] = counters.get(key, 0) + 1
        for row in rec["pairs"]:
            if cfg.judge_enabled and (row.get("quality_score") is None or row["quality_score"] < cfg.judge_threshold):
                counters["llm.dropped.judge"] += 1
                continue
            candidates.append((rec, row, unit))
    if candidates:
        emb = embedder.encode([row["question"] for _, row, _ in candidates])
        keep = greedy_dedup(emb, cfg.dedup_threshold)
        counters["llm.dropped.duplicate"] += sum(not k for k in keep)
        candidates = [c for c, k in zip(candidates, keep) if k]
    pairs = []
    for rec, row, unit in candidates:
        chunks = [unit.chunks[i - 1] for i in row["segment_ids"]]
        chunk_ids = list(dict.fromkeys(c.chunk_id for c in chunks))
        doc_ids = list(dict.fromkeys(c.doc_id for c in chunks))
        qid = "llm-" + hashlib.sha256(f"{rec['unit_id']}\x00{row['question']}".encode()).hexdigest()[:16]
        pairs.append(Pair(
            query_id=qid, query=row["question"], positive_chunk_ids=chunk_ids, positive_doc_ids=doc_ids,
            relevance="chunk", split=split, source=f"llm:{rec['generator_model']}",
            meta={
                "answer": row["answer"], "query_type": row["query_type"], "reasoning_type": row["reasoning_type"],
                "question_complexity": row["question_complexity"], "segment_ids": row["segment_ids"],
                "hop_count": row["hop_count"], "hop_contexts": row["hop_contexts"],
                "quality_score": row.get("quality_score"), "judge": row.get("judge"),
                "provenance": {
                    "doc_ids": doc_ids, "chunk_ids": chunk_ids, "unit_id": rec["unit_id"],
                    "unit_doc_ids": rec["doc_ids"], "generator_model": rec["generator_model"],
                    "judge_model": rec.get("judge_model"), "prompt_version": rec["prompt_version"],
                },
            },
        ))
    counters["llm.pairs_kept"] = len(pairs)
    return pairs, counters


def fingerprint(cfg: LlmSdgConfig, seed: int) -> dict[str, Any]:
    """The settings that change what a unit's record contains (operational knobs excluded)."""
    keep = ("backend", "model", "prompt_version", "max_artifacts_per_type", "num_pairs", "query_type_counts",
            "reasoning_types", "min_complexity", "max_hops", "max_segments", "bundle_size", "bundle_strategy",
            "dedup_threshold", "dedup_model", "judge_enabled", "local_model", "local_gguf_file")
    d = cfg.model_dump(mode="json")
    out = {k: d[k] for k in keep}
    for stage in ("artifacts", "qa", "judge"):
        s = d[stage]
        out[stage] = {k: s[k] for k in ("model", "temperature", "top_p", "max_tokens")}
    out["seed"] = seed
    return out


def fingerprint_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()

"""LLM synthetic-data generator (NVIDIA's SDG recipe): ``sdg.generator=llm``.

Per document (or bundle of 2–3 documents): artifact extraction -> QA generation with a configured mix of query
and reasoning types -> semantic dedup -> LLM-as-judge, against any OpenAI-compatible endpoint (build.nvidia.com,
NIM, vLLM, llama.cpp) or a transformers model in-process. Results are appended per document to a resumable JSONL
in ``sdg.llm.work_dir``; a rerun skips finished documents.

Modules

=================  ==========================================================================================
config             ``embedforge.config.LlmSdgConfig`` (``sdg.llm.*``) and ``LlmStageSettings`` (per stage)
prompts.py         versioned prompt templates (``sdg.llm.prompt_version``)
schemas.py         pydantic models of the structured replies, their JSON schemas, the tolerant JSON parser
backends.py        what a backend receives, returns and raises (``Backend`` protocol, ``Completion``, errors)
openai_backend.py  any OpenAI-compatible endpoint through the official async SDK
local_backend.py   transformers in-process backend (GGUF through ``gguf_file=``)
client.py          async client: concurrency, retries/backoff/Retry-After, budget, usage, structured output
store.py           resumable JSONL results (fsynced, crash-safe, locked)
pipeline.py        unit planning (windows/bundles), the four stages per unit, assembly into ``Pair`` records
=================  ==========================================================================================

Example::

    from embedforge.config import SdgConfig
    from embedforge.stages.sdg import make_generator

    cfg = SdgConfig(generator="llm", llm={"base_url": "http://localhost:8000/v1", "model": "my-model"})
    gen = make_generator(cfg)
    pairs = gen.generate(train_chunks, "train")
    print(gen.stats()["llm.qa.prompt_tokens"])
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.errors import ConfigError, EmbedforgeError
from embedforge.redact import redact
from embedforge.stages.sdg.llm.aio import run_sync
from embedforge.stages.sdg.llm.backends import Backend, FatalEndpointError, RequestError
from embedforge.stages.sdg.llm.client import (
    BudgetExhausted,
    LlmClient,
    StructuredOutputError,
    make_backend,
)
from embedforge.stages.sdg.llm.generate import (
    Embedder,
    Unit,
    UnitProcessor,
    assemble_pairs,
    chunks_fingerprint,
    fingerprint,
    fingerprint_hash,
    plan_units,
    unit_id_for,
)
from embedforge.stages.sdg.llm.prompts import get_prompts
from embedforge.workstore import ResultStore

if TYPE_CHECKING:
    from embedforge.config import ModelConfig, SdgConfig
    from embedforge.contracts import Chunk, Pair, Split

__all__ = ["LlmGenerator", "LlmSdgError", "default_work_dir"]

log = logging.getLogger(__name__)


class LlmSdgError(EmbedforgeError):
    """Too many documents failed (over ``max_failed_fraction``, or ``max_consecutive_failures`` in a row without a
    reply); their failures are in ``failures.jsonl`` of the work folder."""


def default_work_dir(chunks: list[Chunk], state: dict[str, Any]) -> Path:
    """``<tmp>/embedforge-sdg-llm/<hash of corpus + settings>`` — stable across reruns of the same inputs."""
    key = fingerprint_hash({"chunks": chunks_fingerprint(chunks), **state})[:16]
    return Path(tempfile.gettempdir()) / "embedforge-sdg-llm" / key


class LlmGenerator:
    """The ``llm`` pair generator. Build with ``LlmGenerator(cfg)`` (or ``embedforge.stages.sdg.make_generator``); call
    :meth:`generate` once per split, then :meth:`stats`.

    Args:
        cfg: ``SdgConfig``; its ``llm`` section configures everything here, ``seed`` seeds bundling/backoff.
        model_cfg: How ``llm.dedup_model`` is loaded (the pipeline's ``model`` section when it is the base model).
    """

    name = "llm"

    def __init__(self, cfg: SdgConfig, model_cfg: ModelConfig | None = None):
        self.cfg = cfg
        self.llm = cfg.llm
        self.prompts = get_prompts(cfg.llm.prompt_version)
        self.embedder = Embedder(cfg.llm.dedup_model, model_cfg, cfg.llm.encode)
        self._stats: dict[str, float] = {}
        self._local_backend: Backend | None = None  # a loaded local model is reused by both splits

    # --------------------------------------------------------------------------------------- public API
    def generate(self, chunks: list[Chunk], split: Split, max_pairs: int | None = None) -> list[Pair]:
        """Pairs for the chunks of one split.

        Args:
            chunks: Chunks of ONE split.
            split: ``train`` or ``eval`` (every pair gets it).
            max_pairs: Stop starting new documents once this many pairs are kept (None = all documents).

        Returns:
            Pairs (positives: the chunks behind each pair's segment_ids), in plan order.

        Raises:
            ConfigError: bad endpoint credentials/model/URL, incompatible saved state with resume=always,
                or a work folder locked by another run.
            LlmSdgError: more than ``max_failed_fraction`` of the documents failed, or ``max_consecutive_failures``
                in a row got no reply from the endpoint (results so far are kept).
        """
        if not chunks:
            return []
        started = time.time()
        state = {"fingerprint": fingerprint(self.llm, self.cfg.seed), "chunks_sha256": chunks_fingerprint(chunks),
                 "split": split}
        root = Path(self.llm.work_dir).expanduser() if self.llm.work_dir else default_work_dir(chunks, state)
        folder = root / split
        with ResultStore(folder, state, self.llm.resume) as store:
            units = self._plan(store, chunks)
            run = run_sync(self._run(units, store, max_pairs))
            records = [store.completed[u.unit_id] for u in units if u.unit_id in store.completed]
            pairs, counters = assemble_pairs(records, units, self.llm, split, self.embedder)
            counters.update(run)
            counters.update({
                "llm.units": len(units), "llm.units_done": len(records), "llm.units_resumed": store.resumed,
                "llm.seconds": round(time.time() - started, 3),
            })
            summary = {"split": split, "work_dir": str(folder), **counters}
            store.write_summary(summary)
        self._merge(counters)
        failed, attempted = run["llm.units_failed"], run["llm.units_attempted"]
        log.info("llm sdg %s: %d pairs from %d/%d documents/bundles (%d failed, %d resumed) in %s",
                 split, len(pairs), len(records), len(units), failed, store.resumed, folder)
        if attempted and failed / attempted > self.llm.max_failed_fraction:
            raise LlmSdgError(
                f"sdg.llm: {failed} of {attempted} documents/bundles failed in split {split!r} (limit "
                f"sdg.llm.max_failed_fraction={self.llm.max_failed_fraction}); see {folder / 'failures.jsonl'}. "
                f"Finished documents are kept: rerun to retry only the failed ones.")
        return pairs

    def stats(self) -> dict[str, int | float]:
        """Flat counters over all splits so far: ``llm.<stage>.{requests,prompt_tokens,completion_tokens,
        retries,rate_limited,server_errors,timeouts,...,failures}``, ``llm.units*``, ``llm.dropped.*``,
        ``llm.pairs_kept``, ``llm.max_in_flight``, ``llm.budget_exhausted``."""
        return dict(self._stats)

    # -------------------------------------------------------------------------------------------- steps
    def _plan(self, store: ResultStore, chunks: list[Chunk]) -> list[Unit]:
        by_id = {c.chunk_id: c for c in chunks}
        saved = store.load_plan()
        if saved is not None:
            units = [Unit(u["unit_id"], [by_id[cid] for cid in u["chunk_ids"]]) for u in saved]
            if all(unit_id_for(u.chunks) == u.unit_id for u in units):
                return units
            log.warning("saved plan in %s does not match the chunks; planning again", store.folder)
        units = plan_units(chunks, self.llm, self.embedder, self.cfg.seed)
        if self.llm.max_units:
            units = units[: self.llm.max_units]
        store.save_plan([{"unit_id": u.unit_id, "doc_ids": u.doc_ids, "chunk_ids": u.chunk_ids} for u in units])
        return units

    def _backend(self) -> Backend:
        if self.llm.backend == "local":
            if self._local_backend is None:
                self._local_backend = make_backend(self.llm)
            return self._local_backend
        return make_backend(self.llm)

    async def _run(self, units: list[Unit], store: ResultStore, max_pairs: int | None) -> dict[str, float]:
        from tqdm.auto import tqdm

        todo = [u for u in units if u.unit_id not in store.completed]
        backend = self._backend()
        client = LlmClient(self.llm, backend, self.prompts, seed=self.cfg.seed)
        processor = UnitProcessor(self.llm, client, self.embedder)
        counters = {"llm.units_attempted": 0, "llm.units_completed": 0, "llm.units_failed": 0,
                    "llm.units_skipped": 0}
        fatal: list[BaseException] = []
        stop: list[LlmSdgError] = []  # the endpoint gave no reply for max_consecutive_failures units in a row
        streak = 0
        bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="llm sdg", unit="doc", disable=None,
                   leave=False)
        kept = sum(_kept(r, self.llm) for r in store.completed.values())  # pairs passing the judge so far
        done = len(store.completed)

        async def worker(queue: asyncio.Queue[Unit]) -> None:
            nonlocal kept, done, streak
            while not queue.empty() and not fatal and not stop and not client.budget_exhausted:
                unit = queue.get_nowait()
                counters["llm.units_attempted"] += 1
                try:
                    record = await processor.run(unit)
                except RequestError as exc:
                    self._record_failure(store, unit, exc)
                    if isinstance(exc, BudgetExhausted):  # not the document's fault: left for a rerun
                        counters["llm.units_attempted"] -= 1
                        continue
                    counters["llm.units_failed"] += 1
                    if isinstance(exc, FatalEndpointError):
                        fatal.append(exc)
                    # a reply that fails validation shows the endpoint works; only "no reply" counts
                    streak = 0 if isinstance(exc, StructuredOutputError) else streak + 1
                    if self.llm.max_consecutive_failures and streak >= self.llm.max_consecutive_failures and not stop:
                        stop.append(self._dead_endpoint(streak, exc, store))
                    continue
                streak = 0
                store.add_result(record)
                counters["llm.units_completed"] += 1
                kept += _kept(record, self.llm)
                done += 1
                bar.update(1)

        try:
            while todo and not fatal and not stop and not client.budget_exhausted:
                if max_pairs is not None and kept >= max_pairs:
                    break
                if max_pairs is None:
                    wave, todo = todo, []
                else:  # only as many documents as the pairs still missing need (by the yield so far)
                    per_unit = max(kept / done, 0.5) if done else float(self.llm.num_pairs)
                    n = max(self.llm.max_concurrency, math.ceil((max_pairs - kept) / per_unit))
                    wave, todo = todo[:n], todo[n:]
                queue: asyncio.Queue[Unit] = asyncio.Queue()
                for u in wave:
                    queue.put_nowait(u)
                await asyncio.gather(*(worker(queue) for _ in range(min(self.llm.max_concurrency, len(wave)))))
        finally:
            bar.close()
            if backend is not self._local_backend:
                await backend.close()
        remaining = [u for u in units if u.unit_id not in store.completed]
        counters["llm.units_skipped"] = max(0, len(remaining) - counters["llm.units_failed"])
        if client.budget_exhausted:
            log.warning("sdg.llm.request_budget spent: %d documents/bundles not done; rerun to continue", len(remaining))
        out = {**client.stats(), **counters}
        if fatal:
            self._merge(out)
            raise ConfigError(redact(str(fatal[0]))) from None
        if stop:
            self._merge(out)
            raise stop[0]
        return out

    def _dead_endpoint(self, streak: int, exc: RequestError, store: ResultStore) -> LlmSdgError:
        """The one-line error that stops a run whose endpoint stopped answering: the endpoint (redacted), the
        last error, where the failures are listed and what to do."""
        last = " ".join(redact(str(exc)).split())[:300]
        return LlmSdgError(
            f"sdg.llm: {streak} documents/bundles in a row got no usable reply from sdg.llm.base_url "
            f"{redact(self.llm.base_url)} (last error, at {exc.stage or '?'}: {last}); stopped instead of trying "
            f"the rest (sdg.llm.max_consecutive_failures={self.llm.max_consecutive_failures}). Check the endpoint, "
            f"then rerun: finished documents are kept (failures: {store.folder / 'failures.jsonl'})")

    def _record_failure(self, store: ResultStore, unit: Unit, exc: RequestError) -> None:
        rec: dict[str, Any] = {
            "unit_id": unit.unit_id, "doc_ids": unit.doc_ids, "chunk_ids": unit.chunk_ids,
            "stage": exc.stage, "kind": exc.kind, "error": redact(str(exc))[:2000], "at": time.time(),
        }
        if isinstance(exc, StructuredOutputError):
            rec["raw_excerpt"] = redact(exc.raw[:2000])
            rec["finish_reason"] = exc.finish_reason
        if isinstance(exc, BudgetExhausted):
            rec["kind"] = "budget_exhausted"
        store.add_failure(rec)
        log.warning("document(s) %s failed at %s: %s", ", ".join(unit.doc_ids), rec["stage"], rec["error"][:300])

    def _merge(self, counters: dict[str, float]) -> None:
        """Add this split's counters to the totals (gauges keep their maximum)."""
        for k, v in counters.items():
            if not isinstance(v, (int, float)):
                continue
            if k in ("llm.max_in_flight", "llm.mean_in_flight", "llm.budget_exhausted"):
                self._stats[k] = max(self._stats.get(k, 0), v)
            else:
                self._stats[k] = self._stats.get(k, 0) + v


def _kept(record: dict[str, Any], cfg: Any) -> int:
    if not cfg.judge_enabled:
        return len(record["pairs"])
    return sum(1 for p in record["pairs"] if (p.get("quality_score") or 0) >= cfg.judge_threshold)

"""The schedule search's journal: every finished probe recorded, so a rerun trains only the ones not yet finished.

``train.schedule=auto`` trains several probes before the final run (:mod:`embedforge.stages.train.schedule`; with
folds and augmentation rows several times the fixed run's steps). A train step that dies part-way — a preempted spot node, an
out-of-memory kill in the final run, a KFP retry, ``embedforge run --resume`` — would otherwise search again from
the start. Each probe's result (its per-query held-out scores at every checkpoint, and the base model's where that
probe scored them) is appended, fsynced, to ``probes-<hash>`` in the step's work folder (:mod:`embedforge.stages.train.work`,
:class:`embedforge.workstore.ResultStore`) as soon as it is finished; a later search with the same inputs and
settings takes it from there instead of training it. A search whose folder another process holds (the same run
started twice at once), or that cannot write it, searches without a journal, with a warning.

Under torchrun rank 0 alone opens the folder and writes it; what it found is broadcast, so every rank skips the
same probes (every rank must take part in every probe it trains).
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import embedforge.stages.train.distributed as distributed
import embedforge.stages.train.work as work
from embedforge.config import TrainConfig
from embedforge.contracts import ScheduleTrial
from embedforge.errors import InputError
from embedforge.stages.train.distributed import DistContext
from embedforge.workstore import FolderBusy, ResultStore

log = logging.getLogger(__name__)


@dataclass
class Journal:
    """The finished probes of this search (unit id -> record) and, on rank 0, the open store to add to."""

    folder: Path | None = None
    done: dict[str, dict] = field(default_factory=dict)
    store: ResultStore | None = None
    reused: int = 0

    def get(self, unit: str) -> tuple[ScheduleTrial, list[float]] | None:
        """The recorded probe ``unit`` (its trial and the base scores it recorded), or None if it must be trained."""
        rec = self.done.get(unit)
        if rec is None:
            return None
        self.reused += 1
        trial = ScheduleTrial.model_validate(rec["trial"])
        return trial.model_copy(update={"per_query": rec["per_query"]}), list(rec["base"])

    def put(self, unit: str, trial: ScheduleTrial, base: list[float]) -> None:
        """Record a finished probe (rank 0; fsynced before the next probe starts)."""
        if self.store is None:
            return
        try:
            self.store.add_result({"unit_id": unit, "trial": trial.model_dump(mode="json"),  # (per_query is not
                                   "per_query": trial.per_query, "base": base})  # part of the trial's dump)
        except OSError as exc:  # a full or lost volume: the search goes on, unrecorded
            log.warning("train schedule: cannot record probe %s in %s (%s); the search goes on without the journal",
                        unit, self.folder, exc)
            self.store = None


@contextmanager
def opened(state: dict, cfg: TrainConfig, dist: DistContext) -> Iterator[Journal]:
    """The journal of the search ``state`` identifies: rank 0 opens (or creates) its folder and holds its lock for
    the search; every rank gets the probes it already holds."""
    folder = work.folder(cfg, "probes", state)
    store = None
    if dist.is_main:
        store = ResultStore(folder, state, "if_possible", setting="train.work_dir", what="probes")
        try:
            try:
                store.__enter__()
            except InputError as exc:  # a damaged record: the journal is only a shortcut, start it again
                log.warning("train schedule: %s; starting the probe journal again", exc)
                shutil.rmtree(folder, ignore_errors=True)
                store.__enter__()
        except FolderBusy as exc:
            log.warning("train schedule: %s; searching without a journal", exc)
            store = None
        except OSError as exc:  # a read-only or full volume: the search itself still works
            log.warning("train schedule: cannot use the probe journal %s (%s); searching without one", folder, exc)
            store = None
    done = distributed.broadcast(dict(store.completed) if store is not None else {}, dist)
    journal = Journal(folder if store is not None else None, done, store)
    try:
        yield journal
    finally:
        if store is not None:
            store.__exit__(None, None, None)

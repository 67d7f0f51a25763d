"""The schedule search's journal: every finished probe recorded, so a rerun trains only the ones not yet finished.

``train.schedule=auto`` trains several probes before the final run (:mod:`embedforge.train.schedule`; on the
GPU profile about 7-10 x the fixed run's steps). A train step that dies part-way — a preempted spot node, an
out-of-memory kill in the final run, a KFP retry, ``embedforge run --resume`` — would otherwise search again from
the start. Each probe's result (its per-query held-out scores at every checkpoint, and the base model's where that
probe scored them) is appended, fsynced, to a work folder (:class:`embedforge.workstore.ResultStore`) as soon as
it is finished; a later search with the same inputs and settings takes it from there instead of training it.

Which folder: ``<root>/<hash>`` where ``<hash>`` is the sha256 of everything a probe's result depends on — the
train rows and known positives, every ``train`` setting (but ``schedule.work_dir`` itself), the model and prompt
settings, the base model folder's bytes, the WiSE-FT weight, the number of processes and embedforge's code —
so another run's probes are never reused, and runs with other inputs sharing a root do not meet. ``<root>``:
``train.schedule.work_dir``, else ``$EMBEDFORGE_TRAIN_WORK_DIR`` (the compiled Kubernetes pipeline points it at the
data volume, which outlives the pod), else the system temp folder; ``embedforge run`` uses ``<out>/train_work``.
The driver deletes the folder once the step has saved its model. A search whose folder another process holds
(the same run started twice at once) searches without a journal, with a warning.

Under torchrun rank 0 alone opens the folder and writes it; what it found is broadcast, so every rank skips the
same probes (every rank must take part in every probe it trains).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import embedforge.train.distributed as distributed
from embedforge.config import ModelConfig, PromptsConfig, TrainConfig
from embedforge.contracts import ScheduleTrial, TrainExample
from embedforge.resume import content_sha256
from embedforge.train.distributed import DistContext
from embedforge.workstore import FolderBusy, ResultStore

log = logging.getLogger(__name__)

#: Where the journal lives when ``train.schedule.work_dir`` is empty (set by the compiled Kubernetes pipeline).
WORK_DIR_ENV = "EMBEDFORGE_TRAIN_WORK_DIR"


def root(cfg: TrainConfig) -> Path:
    """The folder the search's journal goes under (see the module docstring)."""
    chosen = cfg.schedule.work_dir or os.environ.get(WORK_DIR_ENV, "")
    return Path(chosen).expanduser() if chosen else Path(tempfile.gettempdir()) / "embedforge-train-probes"


def identity(examples: list[TrainExample], known: dict[str, set[str]], cfg: TrainConfig, base_model: str,
             prompts: PromptsConfig, model_cfg: ModelConfig | None, base_weight: float, world: int) -> dict:
    """What a probe's result depends on, as JSON-able values (the journal's ``state.json``)."""
    import embedforge

    code = hashlib.sha256()  # another image (a fix in the loss, the scoring) must not reuse this one's probes
    package = Path(embedforge.__file__).parent
    for source in sorted(package.rglob("*.py")):
        code.update(source.relative_to(package).as_posix().encode("utf-8") + b"\0" + source.read_bytes())
    rows = hashlib.sha256()
    for ex in examples:
        rows.update(json.dumps(ex.model_dump(mode="json"), sort_keys=True).encode("utf-8") + b"\n")
    rows.update(json.dumps({a: sorted(t) for a, t in sorted(known.items())}).encode("utf-8"))
    settings = cfg.model_dump(mode="json")
    settings["schedule"].pop("work_dir", None)
    model_path = Path(base_model)
    return {
        "embedforge": embedforge.__version__,
        "code_sha256": code.hexdigest(),
        "rows_sha256": rows.hexdigest(),
        "train": settings,
        "model": (model_cfg or ModelConfig()).model_dump(mode="json"),
        "prompts": prompts.model_dump(mode="json"),
        # a folder by its bytes only: a retried TrainJob or KFP task stages the same model under another path
        "base_model": "" if model_path.is_dir() else base_model,
        "base_model_sha256": content_sha256(model_path) if model_path.is_dir() else "",
        "base_weight": base_weight,
        "processes": world,
    }


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
        if self.store is not None:
            self.store.add_result({"unit_id": unit, "trial": trial.model_dump(mode="json"),  # (per_query is not
                                   "per_query": trial.per_query, "base": base})  # part of the trial's dump)


@contextmanager
def opened(state: dict, cfg: TrainConfig, dist: DistContext) -> Iterator[Journal]:
    """The journal of the search ``state`` identifies: rank 0 opens (or creates) its folder and holds its lock for
    the search; every rank gets the probes it already holds."""
    key = hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    folder = root(cfg) / key
    store = None
    if dist.is_main:
        store = ResultStore(folder, state, "if_possible", setting="train.schedule.work_dir", what="probes")
        try:
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


def discard(folder: str | Path | None) -> None:
    """Delete a finished search's journal (the probes are in the train result; a rerun would not need them)."""
    if folder:
        shutil.rmtree(folder, ignore_errors=True)

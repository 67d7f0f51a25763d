"""Checkpoints of the final training run: a train step killed mid-run continues from its last checkpoint.

A production-size run takes hours on a GPU that may be preempted. At most every ``train.checkpoint_minutes`` of
training, the run's state after step *s* is written to ``run-<hash>/step-<s>`` in the step's work folder
(:mod:`embedforge.stages.train.work`: the hash names the rows, settings and base model, so only the same run finds it):
weights, optimizer, learning-rate schedule and gradient scaler, the loss history and the tail average so far
(rank 0: the data-parallel replicas are identical), and every rank's random streams (dropout). Each checkpoint is
written under a temporary name and renamed into place once every rank has written its part; the previous one is
deleted after, so the folder holds one complete checkpoint at a time.

A rerun of the step with the same rows and settings restores the latest complete checkpoint and skips the steps it
covers. The plan of batches is a function of the seed (:func:`embedforge.stages.train.batching.plan_steps`), so the
continuation trains exactly the batches an uninterrupted run trains, from the same state: on the same hardware, the
same weights. Under torchrun rank 0's clock decides when to save (checked every :data:`CHECK_EVERY` steps, one small
broadcast) and which checkpoint to restore, so all ranks agree. Off with ``checkpoint_minutes`` 0 and ``train.soup``
> 1 (several runs).

A checkpoint is only ever read as data: ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples,
dicts — what :meth:`Checkpoints._write` saves; the numpy random stream is saved as a tensor and numbers, not as a
pickled array), never unpickled, so a file planted in the work folder cannot run code; the folder is private to
this user (mode 0700, :func:`embedforge.stages.train.work.folder`) and one that is not (another user's, a link) is
not read. What is read is checked against the run before anything is set — every weight's name and shape, the
optimizer's groups and moments, the schedule's fields, the random streams — so a checkpoint that reads but does not
fit (another model, a damaged file) is the documented warning ``cannot read the checkpoint ...; training from the
first step``, never a crash and never a half-restored run.

With FSDP (``train.sharding=fsdp``) no rank holds the whole state: the weights and AdamW moments are written by
every rank, each its own shards, with ``torch.distributed.checkpoint`` (``shards/`` of the checkpoint;
a collective), and read back into the same sharding — the whole model is never gathered on one rank, which is the
point of sharding a model too large for one GPU's memory. They are read into copies first and set only when every
rank read its part, so a damaged checkpoint still leaves the run as it was (the copies cost one more sharded state
per rank, once, before training starts).
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import embedforge.stages.train.distributed as distributed
from embedforge.stages.train import work
from embedforge.stages.train.distributed import DistContext

if TYPE_CHECKING:
    from embedforge.stages.train.loss_log import LossLog
    from embedforge.stages.train.soup import WeightAverage
    from embedforge.stages.train.step import Stepper

log = logging.getLogger(__name__)

#: Under torchrun the ranks agree on saving every this many steps (a broadcast from rank 0).
CHECK_EVERY = 25
_COMPLETE = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoints:
    """The final run's checkpoints in ``folder`` (None: off), saved at most every ``every_s`` seconds."""

    folder: Path | None
    every_s: float
    dist: DistContext = field(default_factory=DistContext)
    _last: float = field(default_factory=time.monotonic)

    def restore(self, stepper: Stepper, losses: LossLog, tail: WeightAverage) -> int:
        """Load the latest complete checkpoint into the run's parts; returns the steps it covers (0: none)."""
        if self.folder is None:
            return 0
        latest, private = None, True
        if self.dist.is_main and self.folder.is_dir():
            if (why := work.not_private(self.folder)) is not None:  # someone else's files: never read, never written
                log.warning("train: the checkpoint folder %s is %s; training from the first step without "
                            "checkpoints", self.folder, why)
                private = False
            else:
                steps = [int(m.group(1)) for p in self.folder.iterdir() if (m := _COMPLETE.match(p.name))]
                latest = max(steps, default=None)
        latest, private = distributed.broadcast((latest, private), self.dist)  # rank 0 decides for all
        if not private:
            self.folder = None
        if latest is None or not private:
            return 0
        import torch

        where = self.folder / f"step-{latest}"
        shards = _Shards(stepper) if stepper.sharded else None
        state, rng = {}, {}

        def read() -> None:  # read everything before changing anything: a damaged checkpoint leaves the run as it was
            state.update(_load(where / "state.pt"))
            rng.update(_load(where / f"rng-{self.dist.rank}.pt"))
            _check_fits(state, rng, stepper)

        failed, then = f"cannot read the checkpoint {where}", "training from the first step"
        ok = _attempt(read, failed, then)
        if shards is not None and distributed.all_ranks(ok, self.dist):  # a collective: all ranks or none
            ok = _attempt(lambda: shards.read(where / "shards"), failed, then)
        if not distributed.all_ranks(ok, self.dist):
            if shards is not None:
                shards.forget()
            return 0
        if shards is not None:
            shards.apply()
        else:
            stepper.model.load_state_dict(state["model"])
            stepper.optimizer.load_state_dict(state["optimizer"])
        stepper.scheduler.load_state_dict(state["scheduler"])
        if stepper.scaler is not None and state["scaler"] is not None:
            stepper.scaler.load_state_dict(state["scaler"])
        losses.history, losses.last = state["losses"]["history"], state["losses"]["last"]
        device = next(stepper.model.parameters()).device
        losses._buf = [torch.tensor(v, dtype=torch.float32, device=device) for v in state["losses"]["buffer"]]
        tail.total, tail.count = state["tail"]["total"], state["tail"]["count"]
        _set_rng(rng)
        if self.dist.is_main:
            log.info("train: continuing from the checkpoint after step %d (%s)", latest, where)
        return latest

    def after_step(self, step: int, n_steps: int, stepper: Stepper, losses: LossLog, tail: WeightAverage) -> None:
        """Save the state after ``step`` when ``every_s`` has passed since the last save (never after the last
        step: the model itself is saved then)."""
        if self.folder is None or step >= n_steps or (self.dist.enabled and step % CHECK_EVERY):
            return
        due = time.monotonic() - self._last >= self.every_s
        token = distributed.broadcast(uuid.uuid4().hex[:8] if due else None, self.dist)  # rank 0 decides for all
        if token is None:
            return
        partial = self.folder / f"step-{step}.partial-{token}"
        # a full or lost volume must not end the run: it goes on without checkpoints
        failed, then = f"cannot write the checkpoint after step {step} to {partial}", "training goes on without checkpoints"
        errors = (OSError, RuntimeError)  # (torch.save reports a full volume as RuntimeError)
        ok = _attempt(lambda: self._write(partial, stepper, losses, tail), failed, then, errors)
        if stepper.sharded and distributed.all_ranks(ok, self.dist):  # a collective: all ranks or none
            ok = _attempt(lambda: _Shards(stepper).write(partial / "shards"), failed, then, errors)
        if not distributed.all_ranks(ok, self.dist):  # every rank's part is written, or the checkpoint is void
            if self.dist.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            self.folder = None
            return
        if self.dist.is_main:
            shutil.rmtree(self.folder / f"step-{step}", ignore_errors=True)  # (none should be there)
            partial.rename(self.folder / f"step-{step}")
            for old in self.folder.iterdir():  # the previous checkpoint, and parts an interrupted save left
                if old.name != f"step-{step}":
                    shutil.rmtree(old, ignore_errors=True)
            log.info("train: checkpoint after step %d of %d in %s", step, n_steps, self.folder)
        self._last = time.monotonic()

    def _write(self, partial: Path, stepper: Stepper, losses: LossLog, tail: WeightAverage) -> None:
        """This rank's part of a checkpoint: its random streams; rank 0 also the run's state."""
        import torch

        partial.mkdir(mode=0o700, parents=True, exist_ok=True)
        torch.save(_rng_state(), partial / f"rng-{self.dist.rank}.pt")
        if self.dist.is_main:  # (FSDP: the sharded state is written by _Shards, every rank its part)
            torch.save({
                "model": None if stepper.sharded else stepper.model.state_dict(),
                "optimizer": None if stepper.sharded else stepper.optimizer.state_dict(),
                "scheduler": stepper.scheduler.state_dict(),
                "scaler": stepper.scaler.state_dict() if stepper.scaler is not None else None,
                "losses": {"history": losses.history, "last": losses.last,
                           "buffer": [float(v) for v in losses._buf]},
                "tail": {"total": tail.total, "count": tail.count},
            }, partial / "state.pt")


class _Shards:
    """FSDP's part of a checkpoint: this rank's shards of the weights and the AdamW state, written and read with
    ``torch.distributed.checkpoint`` (every rank takes part in both). (No tail average: ``train.average_last``
    cannot run with FSDP.)"""

    def __init__(self, stepper: Stepper) -> None:
        self.stepper, self._read = stepper, None

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        model, optimizer = self.stepper.model, self.stepper.optimizer
        return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}

    def write(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(folder))

    def read(self, folder: Path) -> None:
        """Read the shards into copies of this run's state (nothing of the run changes yet)."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.utils._pytree import tree_map

        _check_shard_metadata(folder)  # (torch.distributed.checkpoint unpickles it)
        # the optimizer's moments exist only after a first step: get_optimizer_state_dict makes them (zeros, lr 0) for
        # every weight; the checkpoint has them only for weights that had gradients (not e.g. an unused pooler's)
        saved = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
        had = {k[len("optimizer.state."):].rsplit(".", 1)[0] for k in saved if k.startswith("optimizer.state.")}
        copies = tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, self._state())
        copies["optimizer"]["state"] = {k: v for k, v in copies["optimizer"]["state"].items() if k in had}
        dcp.load(copies, checkpoint_id=str(folder), planner=_data_only_planner())
        self._read = copies

    def forget(self) -> None:
        """Nothing was restored: the optimizer starts as a fresh one (its zero moments made for reading dropped)."""
        self.stepper.optimizer.state.clear()
        self._read = None

    def apply(self) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        model, optimizer = self.stepper.model, self.stepper.optimizer
        set_model_state_dict(model, self._read["model"])
        # (not strict: weights that never had a gradient have no optimizer state, as in the run that saved it)
        set_optimizer_state_dict(model, optimizer, self._read["optimizer"], options=StateDictOptions(strict=False))


#: What the metadata of a torch.distributed.checkpoint may name besides its own classes: it is a pickle, read by
#: ``pickle.load``, so it is checked first (:func:`_check_shard_metadata`).
_SHARD_METADATA_GLOBALS = frozenset({
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict"),
    ("torch.serialization", "_get_layout"), ("torch._utils", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
})


class _ShardMetadataUnpickler(pickle.Unpickler):
    """Builds only the checkpoint metadata's own classes, torch sizes, dtypes and layouts and the names above; any
    other name (a function to call, a class to build) is refused before its module is imported."""

    def find_class(self, module: str, name: str) -> object:
        import torch

        if module == "torch.distributed.checkpoint.metadata":
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        elif module == "torch":
            found = getattr(torch, name, None)
            if found is torch.Size or isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
                return found
        elif (module, name) in _SHARD_METADATA_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


def _check_shard_metadata(folder: Path) -> None:
    """Raise ``pickle.UnpicklingError`` unless every metadata file of the sharded checkpoint ``folder`` holds only
    what :class:`_ShardMetadataUnpickler` allows (read before torch.distributed.checkpoint unpickles it)."""
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".metadata"):
            with path.open("rb") as f:
                _ShardMetadataUnpickler(f).load()


def _data_only_planner() -> object:
    """torch.distributed.checkpoint's load planner, except that the non-tensor values (saved as torch.save bytes:
    the optimizer's settings) must load with ``weights_only`` before they are loaded."""
    import io

    import torch
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class DataOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: object, value: io.BytesIO) -> None:
            raw = value.read()
            torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)  # raises for more than plain data
            super().load_bytes(read_item, io.BytesIO(raw))

    return DataOnlyLoadPlanner()


def _attempt(action: Callable[[], None], failed: str, then: str, errors: tuple[type[BaseException], ...] = (Exception,)
             ) -> bool:
    """Run ``action``; on one of ``errors`` (and torch.distributed.checkpoint's CheckpointException, a
    BaseException: a rank's error, raised on every rank) log ``failed (error); then`` and return False. A checkpoint
    is only a shortcut: an unreadable one or an unwritable folder never ends the run."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        action()
        return True
    except (*errors, CheckpointException) as exc:
        log.warning("train: %s (%s: %s); %s", failed, type(exc).__name__, exc, then)
        return False


def _load(path: Path) -> dict:
    """A checkpoint file read as data only (``weights_only``: nothing in it is executed).

    Raises:
        ValueError: It holds anything but tensors and plain data.
        TypeError: It is not a dict.
    """
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # (torch's text suggests loading it anyway: only the cause is kept)
        cause = re.search(r"Unsupported [^\n]*?(?= was not an allowed|\.\s|\n|$)", str(exc))
        raise ValueError(f"{path.name} holds more than tensors and plain data, so it is not loaded"
                         + (f" ({cause.group(0)})" if cause else "")) from None
    if not isinstance(data, dict):
        raise TypeError(f"{path.name} holds a {type(data).__name__}, not a checkpoint")
    return data


def _check_fits(state: dict, rng: dict, stepper: Stepper) -> None:
    """Raise ValueError (naming what differs) unless ``state`` and ``rng`` fit this run: loading them then cannot
    fail half way."""
    import torch

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"it does not fit this run: {what}")

    need({"model", "optimizer", "scheduler", "scaler", "losses", "tail"} <= state.keys(), "fields are missing")
    if not stepper.sharded:
        saved, own = state["model"], stepper.model.state_dict()
        need(isinstance(saved, dict) and saved.keys() == own.keys(), "its weights have other names")
        for name, value in own.items():
            need(isinstance(saved[name], torch.Tensor) and saved[name].shape == value.shape,
                 f"weight {name} has shape {tuple(getattr(saved[name], 'shape', ()))}, the model's {tuple(value.shape)}")
        _check_optimizer(state["optimizer"], stepper.optimizer, need)
    need(isinstance(state["scheduler"], dict) and state["scheduler"].keys() == stepper.scheduler.state_dict().keys(),
         "its learning-rate schedule has other fields")
    if stepper.scaler is not None and state["scaler"] is not None:
        need(isinstance(state["scaler"], dict) and state["scaler"].keys() == stepper.scaler.state_dict().keys(),
             "its gradient scaler has other fields")
    losses, tail = state["losses"], state["tail"]
    need(isinstance(losses, dict) and isinstance(losses.get("history"), list) and isinstance(losses.get("buffer"), list)
         and isinstance(losses.get("last"), float) and all(isinstance(v, float) for v in losses["buffer"]),
         "its loss history is not a list of numbers")
    need(isinstance(tail, dict) and isinstance(tail.get("total"), dict) and isinstance(tail.get("count"), int),
         "its tail average is malformed")
    weights = stepper.model.state_dict() if tail["total"] else {}
    for name, value in tail["total"].items():
        need(name in weights and isinstance(value, torch.Tensor) and value.shape == weights[name].shape,
             f"its tail average has weight {name} of another shape")
    try:  # on throwaway generators: a stream that does not load must not change the run's
        torch.Generator().set_state(rng["torch"])
        np.random.RandomState().set_state(_numpy_state(rng["numpy"]))
        random.Random().setstate(tuple(tuple(v) if isinstance(v, list) else v for v in rng["python"]))
        cuda = rng["cuda"]
        if cuda is not None and torch.cuda.is_available():
            own_cuda = torch.cuda.get_rng_state_all()
            need(len(cuda) == len(own_cuda) and all(a.shape == b.shape for a, b in zip(cuda, own_cuda)),
                 "its CUDA random streams are for other devices")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"it does not fit this run: its random streams do not load ({type(exc).__name__}: {exc})") from None


def _check_optimizer(saved: object, optimizer: object, need: Callable[[bool, str], None]) -> None:
    """The checks ``optimizer.load_state_dict`` makes (groups and their sizes), plus each moment's shape (which it
    does not check: a wrong one would fail at the first step)."""
    import torch

    need(isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list),
         "its optimizer state is malformed")
    own = optimizer.param_groups
    need(len(saved["param_groups"]) == len(own) and all(
        isinstance(g, dict) and len(g.get("params", ())) == len(o["params"]) for g, o in zip(saved["param_groups"], own)),
        "its optimizer has other parameter groups")
    params = {i: p for g, o in zip(saved["param_groups"], own) for i, p in zip(g["params"], o["params"])}
    for key, moments in saved["state"].items():
        need(key in params and isinstance(moments, dict), "its optimizer holds moments of unknown weights")
        for name, value in moments.items():
            need(not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape == params[key].shape,
                 f"its optimizer's {name} has another shape than its weight")


def _rng_state() -> dict:
    """This process's random streams as tensors and plain data (what ``weights_only`` loads)."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _numpy_state(saved: dict) -> tuple:
    return (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
            saved["cached_gaussian"])


def _set_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

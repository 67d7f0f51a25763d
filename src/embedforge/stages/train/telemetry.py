"""Watching a run while it trains: per-step metrics to the step's live MLflow run and a progress line with the ETA.

Every ``train.log_every_steps`` steps (and at the last) :class:`Telemetry` sends the window's mean loss, the learning
rate, throughput (samples/s and tokens/s, the prompt and special tokens included; over the steps since the last
report, whether to MLflow or to the console) and, on CUDA, the memory allocated
and its peak in the window to :class:`embedforge.registry.live_run.LiveRun`; at most every ``progress_s`` seconds (and
at the last step) it logs one INFO line ``train: step S/T (P %), loss L, N samples/s, ETA 1m05s`` — what
``embedforge run`` shows on the console without ``-v`` (:mod:`embedforge.local.logs`).

The loss stays on the device between reports: reading it back costs one device sync per report, not per step.
Only the main process reports (rank 0 of a torchrun job; the global batch's rows are counted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from embedforge.contracts import TrainExample
from embedforge.registry.live_run import LiveRun

if TYPE_CHECKING:
    import torch

    from embedforge.stages.train.step import Stepper

log = logging.getLogger(__name__)

#: Least seconds between two progress lines.
PROGRESS_S = 10.0


def eta(seconds: float) -> str:
    """``3h02m``, ``4m05s`` or ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Telemetry:
    """Observes the steps of one training run (see the module docstring); ``offset`` shifts its step numbers in
    MLflow (train.soup's later runs continue after the earlier ones)."""

    def __init__(self, stepper: "Stepper", examples: Sequence[TrainExample], total: int, start: int, every: int,
                 live: LiveRun, main: bool = True, offset: int = 0, progress_s: float = PROGRESS_S):
        self.stepper, self.examples, self.total, self.start = stepper, examples, total, start
        self.every, self.live, self.main, self.offset, self.progress_s = every, live, main, offset, progress_s
        self.began = self._window_began = self._last_line = time.perf_counter()
        self._losses: list[torch.Tensor] = []
        self._rows: list[int] = []
        self._cuda = stepper.device_type == "cuda"

    def after_step(self, step: int, rows: list[int], loss: "torch.Tensor") -> None:
        """Record step ``step`` (its global batch ``rows`` and detached ``loss``); report when one is due."""
        if not self.main:
            return
        self._losses.append(loss)
        self._rows.extend(rows)
        now = time.perf_counter()
        last = step == self.total
        to_mlflow = self.live.active and self.every > 0 and (step % self.every == 0 or last)
        to_console = last or now - self._last_line >= self.progress_s
        if to_mlflow or to_console:
            self._report(step, now, to_mlflow, to_console)

    def _report(self, step: int, now: float, to_mlflow: bool, to_console: bool) -> None:
        import torch

        loss = float(torch.stack(self._losses).float().mean().cpu())
        seconds = max(now - self._window_began, 1e-9)
        samples = len(self._rows) / seconds
        if to_mlflow:
            tokens = sum(self._tokens(i) for i in self._rows) / seconds
            metrics = {"train/loss": loss, "train/learning_rate": max(self.stepper.scheduler.get_last_lr()),
                       "train/samples_per_second": samples, "train/tokens_per_second": tokens}
            if self._cuda:
                metrics["train/gpu_memory_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
                metrics["train/gpu_memory_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            self.live.log(self.offset + step, metrics)
        if to_console:
            done = step - self.start
            remaining = (now - self.began) / max(done, 1) * (self.total - step)
            log.info("train: step %d/%d (%d %%), loss %.4f, %.1f samples/s, ETA %s", step, self.total,
                     100 * step // max(self.total, 1), loss, samples, eta(remaining))
            self._last_line = now
        self._losses, self._rows, self._window_began = [], [], now

    def _tokens(self, row: int) -> int:
        """Tokens the step embedded for training row ``row`` (its query, positive and hard negatives)."""
        ex = self.examples[row]
        docs = self.stepper.document_tokens
        return self.stepper.query_tokens.length(ex.anchor) + sum(docs.length(t) for t in (ex.positive, *ex.negatives))


__all__ = ["PROGRESS_S", "Telemetry", "eta"]

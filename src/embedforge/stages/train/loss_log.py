"""The loss history of a run, read back from the device once per window of steps (one GPU sync per window)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class LossLog:
    """Loss per step, kept on the device; every ``window`` steps their mean is appended to ``history``
    (``{"step", "loss"}``, the manifest's ``loss_history``) and a non-finite loss stops the run."""

    window: int
    history: list[dict[str, float]] = field(default_factory=list)
    _buf: list[torch.Tensor] = field(default_factory=list)
    last: float = float("nan")

    def add(self, step: int, loss: torch.Tensor) -> bool:
        """Record ``loss``; returns True when the window was flushed (``last`` then holds its mean)."""
        self._buf.append(loss)
        if len(self._buf) >= self.window:
            self.flush(step)
            return True
        return False

    def flush(self, step: int) -> None:
        """Read the buffered losses back (ending at ``step``) and append their mean to ``history``.

        Raises:
            FloatingPointError: A buffered loss is NaN or infinite.
        """
        import torch

        if not self._buf:
            return
        values = torch.stack(self._buf).float().cpu().tolist()
        self._buf = []
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"train: loss is {bad[0]} in steps {step - len(values) + 1}..{step}; lower train.learning_rate"
            )
        self.last = float(np.mean(values))
        self.history.append({"step": step, "loss": round(self.last, 6)})

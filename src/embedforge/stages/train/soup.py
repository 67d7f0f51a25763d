"""Model soup (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", https://arxiv.org/abs/2203.05482): the uniform average of the weights of several
runs fine-tuned from the same base weights with different seeds.

Runs that start from one pre-trained model and differ only in batch order and dropout stay in one basin of the loss,
so their average is itself a good model — usually better than the average run, and far less dependent on the seed
(small pair sets make single runs seed-sensitive). ``train.soup`` sets the number of runs; the served model costs
the same as one run's.

The same average serves tail averaging within one run (``train.average_last``, Polyak averaging / SWA: Izmailov et
al. 2018, https://arxiv.org/abs/1803.05407): the weights at a few evenly spaced steps of the run's last stretch are
averaged, which smooths the last steps' batch-to-batch noise at no extra training time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from embedforge.stages.train.wise_ft import interpolate_weights, snapshot_weights

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


class WeightAverage:
    """Running uniform average of models' floating-point weights, summed in float32 on the CPU."""

    def __init__(self) -> None:
        self.total: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, model: SentenceTransformer) -> None:
        """Add ``model``'s current weights to the average."""
        for k, v in snapshot_weights(model).items():
            if k in self.total:
                self.total[k] += v.float()
            else:
                self.total[k] = v.float()
        self.count += 1

    def load_into(self, model: SentenceTransformer) -> None:
        """Overwrite ``model``'s floating-point weights with the average (each in the model's own dtype)."""
        if not self.count:
            raise ValueError("no weights were added to the average")
        interpolate_weights(model, {k: v / self.count for k, v in self.total.items()}, 1.0)


def tail_steps(n_steps: int, fraction: float, most: int = 10) -> set[int]:
    """The 1-based steps whose weights ``train.average_last = fraction`` averages: up to ``most`` evenly spaced
    steps of the last ``ceil(fraction x n_steps)``, the last step always included; empty when ``fraction`` is 0."""
    tail = min(n_steps, math.ceil(fraction * n_steps))
    if tail <= 0:
        return set()
    count = min(most, tail)
    return {n_steps - round(i * (tail - 1) / max(count - 1, 1)) for i in range(count)}

"""Model soup (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", https://arxiv.org/abs/2203.05482): the uniform average of the weights of several
runs fine-tuned from the same base weights with different seeds.

Runs that start from one pre-trained model and differ only in batch order and dropout stay in one basin of the loss,
so their average is itself a good model — usually better than the average run, and far less dependent on the seed
(small pair sets make single runs seed-sensitive). ``train.soup`` sets the number of runs; the served model costs
the same as one run's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedforge.train.wise_ft import interpolate_weights, snapshot_weights

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

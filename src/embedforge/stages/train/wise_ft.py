"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): save weights interpolated between the
fine-tuned model and the model it started from.

``theta = (1 - w) * theta_finetuned + w * theta_base`` keeps most of the in-domain gain while giving back robustness
the fine-tuning traded away — the guard for noisy generated pairs. ``w`` is ``train.base_weight`` when set, else
what the pair policy that mine applied says (:mod:`embedforge.contracts.policy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from embedforge import contracts
from embedforge.config import TrainConfig
from embedforge.contracts import MinedPolicy

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


def mined_policy(mined_dir: str | Path) -> MinedPolicy | None:
    """The pair policy recorded by the mine stage that wrote ``mined_dir``; None when no mine manifest is there.

    Raises:
        InputError: The mine result is unreadable (e.g. written by an older embedforge): re-run mine.
    """
    if not contracts.has_manifest(mined_dir):
        return None
    return contracts.read_result(mined_dir, contracts.MineResult).policy


def resolve_base_weight(cfg: TrainConfig, mined_dir: str | Path) -> float:
    """``cfg.base_weight`` if set; else the base weight of the pair kind that made most rows
    (:meth:`~embedforge.contracts.MinedPolicy.base_weight`); 0 for rows that no mine stage wrote."""
    if cfg.base_weight is not None:
        return cfg.base_weight
    policy = mined_policy(mined_dir)
    return policy.base_weight() if policy is not None else 0.0


def snapshot_weights(model: SentenceTransformer) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's floating-point parameters and buffers (the base weights, before training)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if v.is_floating_point()}


def interpolate_weights(model: SentenceTransformer, base: dict[str, torch.Tensor], base_weight: float) -> None:
    """In place, ``theta = (1 - base_weight) * theta_finetuned + base_weight * theta_base``."""
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k in base:
                v.mul_(1.0 - base_weight).add_(base[k].to(v.device, v.dtype), alpha=base_weight)

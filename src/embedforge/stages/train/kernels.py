"""Fused GPU kernels for decoder encoders: Liger's RMSNorm, SwiGLU and RoPE in place of the eager ones.

A decoder layer's eager forward spends a large share of the step on memory-bound elementwise work — RMSNorm's
casts and multiplies, SwiGLU's ``silu(gate) * up``, RoPE's rotations — each a separate kernel reading and writing
the whole activation. Liger (``liger-kernel``, Triton kernels) does each in one pass, forward and backward, with
the same numerics (fp32 accumulation in RMSNorm, as Llama's own). Only the modules' ``forward`` is replaced on the
loaded model (and RoPE's function in the model family's module): the weights, their names and the saved folder
stay exactly as they were, so the trained model loads anywhere without Liger.

``train.kernels``: ``auto`` fuses on CUDA for the model types Liger supports (Llama, Mistral, Qwen2/3, Gemma ...)
when ``liger-kernel`` is installed (the GPU image has it) and leaves every other case eager; ``liger`` requires it
(one line naming what is missing); ``none`` never fuses. Liger's loss kernels (cross-entropy on a language-model
head) are never applied: an encoder has no such head.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import TYPE_CHECKING

from embedforge.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

#: What Liger fuses here; its loss kernels stay off (they replace a causal LM's forward).
_FUSED = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True, "cross_entropy": False,
          "fused_linear_cross_entropy": False}


def fuse(model: "SentenceTransformer", mode: str, device: str) -> str:
    """Apply the kernels ``mode`` asks for to the transformer of ``model``; returns what was applied
    (``"liger"`` or ``"none"``), for the train manifest.

    Raises:
        ConfigError: ``mode`` is ``liger`` but the run is not on CUDA, ``liger-kernel`` is not installed, or it has
            no kernels for this model type.
    """
    if mode == "none":
        return "none"
    encoder = model.transformers_model
    model_type = getattr(encoder.config, "model_type", "")
    why_not = _why_not(model_type, device)
    if why_not is not None:
        if mode == "liger":
            raise ConfigError(f"train.kernels=liger: {why_not}: set train.kernels=auto (fused where possible) or none")
        log.debug("train: eager kernels (%s)", why_not)
        return "none"
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]
    accepted = inspect.signature(apply).parameters
    apply(model=encoder, **{k: v for k, v in _FUSED.items() if k in accepted})
    log.info("train: Liger's fused kernels for %s (RMSNorm, SwiGLU/GeGLU, RoPE)", model_type)
    return "liger"


def _why_not(model_type: str, device: str) -> str | None:
    """Why Liger cannot fuse this model here, or None when it can."""
    if not device.startswith("cuda"):
        return f"fused kernels need CUDA, the run is on {device}"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel; the GPU image has it)"
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"Liger has no kernels for model type {model_type!r}"
    return None

"""LoRA fine-tuning (peft): train low-rank adapters instead of every weight, save a plain model.

:func:`add_adapters` wraps the sentence-transformers model's Hugging Face transformer in a ``peft.PeftModel``
(every base weight frozen, adapters trainable); the rest of training does not change (the optimizer only sees
parameters that require gradients). :func:`merge_adapters` folds ``W + (alpha / r) B A`` into the base weights and
unwraps the transformer, so the saved folder is an ordinary sentence-transformers model: no peft keys, no adapter
files, and export/serving are the same as after full fine-tuning.

Why: the optimizer states and gradients of only the adapters (well under 1 % of a large model's weights), so far
less memory per step, at some cost in quality against full fine-tuning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedforge.config.train import LoraConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: peft's shorthand for every linear layer of the transformer except an output head.
AUTO_TARGETS = "all-linear"


def add_adapters(model: SentenceTransformer, cfg: LoraConfig) -> None:
    """Wrap ``model``'s transformer (``model[0].model``) in LoRA adapters per ``cfg``, in place; no-op when not
    ``cfg.enabled``."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if not cfg.enabled:
        return
    module = model[0]
    targets = AUTO_TARGETS if cfg.target_modules == "auto" else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none")
    module.model = get_peft_model(module.model, peft_cfg)


def has_adapters(model: SentenceTransformer) -> bool:
    from peft import PeftModel

    return isinstance(getattr(model[0], "model", None), PeftModel)


def merge_adapters(model: SentenceTransformer) -> None:
    """Fold the adapters into the base weights and drop the peft wrapper, in place (no-op without adapters)."""
    if has_adapters(model):
        model[0].model = model[0].model.merge_and_unload()

"""What a run is made of before its first step: seeds, the model, precision, optimizer, schedule and the stepper.

AdamW (no decay on biases/LayerNorm), linear warm-up + cosine (or linear) decay, gradient clipping, bf16 autocast on
CUDA (fp16 with a gradient scaler), optionally ``torch.compile`` on the encoder's forward; the memory options
(gradient checkpointing, bf16 weights: :func:`apply_memory_options`; cached batches: :mod:`.cached`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from embedforge.config import ModelConfig, PromptsConfig, TrainConfig
from embedforge.errors import ConfigError, InputError
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.step import Stepper

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

# Architectures whose position ids start after the padding index: two positions are not usable.
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "xlm-roberta-xl"}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def load_for_training(base_model: str, cfg: TrainConfig, prompts: PromptsConfig,
                      model_cfg: ModelConfig | None = None) -> SentenceTransformer:
    """A fresh SentenceTransformer on ``cfg.device`` with our prompts and ``max_seq_length``.

    Args:
        base_model: Model folder or id.
        cfg: Training settings (device, max_seq_length).
        prompts: Query/document prefixes, saved in the model as prompts ``query``/``document``; empty ones fall
            back to the folder's own (:func:`embedforge.retrieval.loading.merge_prompts`).
        model_cfg: How the folder becomes an embedder (the pipeline's ``model`` section); None: auto.

    Raises:
        ConfigError: The model cannot be loaded.
    """
    from embedforge.retrieval import loading as models
    from embedforge.retrieval.encode import pick_device, resolve_model_path

    model = models.load(resolve_model_path(base_model), model_cfg, device=pick_device(cfg.device))
    model.prompts = models.merge_prompts(model, prompts).model_dump()  # the folder's own where prompts.* are empty
    model.default_prompt_name = None
    model.max_seq_length = min(cfg.max_seq_length, _model_length_limit(model) or cfg.max_seq_length)
    return model


def prepare_model(base_model: str, cfg: TrainConfig, prompts: PromptsConfig, model_cfg: ModelConfig | None,
                  dist: DistContext, keep_base: bool = False
                  ) -> tuple[SentenceTransformer, PromptsConfig, dict[str, torch.Tensor] | None]:
    """The model as a run trains it, before its first step: loaded (seeded by ``cfg.seed``, so every rank and every
    call starts from the same weights and LoRA initialisation), fused kernels (``cfg.kernels``,
    :mod:`.kernels`), LoRA adapters (``cfg.lora``), the memory options
    (:func:`apply_memory_options`) and, under torchrun with ``sharding=fsdp``, sharded. The final run and every
    probe of the auto schedule (:mod:`.schedule`) build it here, so a probe measures the run it stands for.

    Returns:
        The model; the prompts it trains with (the folder's own fill empty ones); with ``keep_base`` a CPU copy
        of the weights before training (WiSE-FT, taken before the adapters), else None.
    """
    from embedforge.stages.train import fsdp, kernels
    from embedforge.stages.train.lora import add_adapters
    from embedforge.stages.train.wise_ft import snapshot_weights

    seed_everything(cfg.seed)
    model = load_for_training(base_model, cfg, prompts, model_cfg)
    kernels.fuse(model, cfg.kernels, str(model.device))  # before the adapters: they wrap the fused modules' linears
    prompts = PromptsConfig.model_validate(model.prompts)
    base_state = snapshot_weights(model) if keep_base else None
    seed_everything(cfg.seed)  # the same LoRA initialisation on every rank
    add_adapters(model, cfg.lora)
    seed_everything(cfg.seed + dist.rank)  # different dropout per rank
    apply_memory_options(model, cfg)
    if dist.enabled and cfg.sharding == "fsdp":
        fsdp.shard(model, dist)
    return model, prompts, base_state


def _model_length_limit(model: SentenceTransformer) -> int | None:
    """Longest input the architecture accepts (its position embeddings), or None if unknown."""
    config = getattr(model.transformers_model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    return int(positions) - (2 if getattr(config, "model_type", "") in _POSITION_OFFSET_MODELS else 0)


def apply_memory_options(model: SentenceTransformer, cfg: TrainConfig) -> None:
    """``cfg.gradient_checkpointing``: Hugging Face gradient checkpointing of the transformer, non-reentrant (works
    with inputs that need no gradient, keeps the RNG state so dropout is replayed, same gradients);
    ``cfg.weights_dtype`` bf16: the weights (hence gradients and the optimizer states made from them) in bf16, no
    fp32 master copy (see the field's description)."""
    import torch

    if cfg.gradient_checkpointing:
        model.transformers_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.weights_dtype == "bf16":
        model.to(torch.bfloat16)


def compile_encoder(model: SentenceTransformer) -> Callable[[], None]:
    """``torch.compile`` the transformer's ``forward`` in place (dynamic shapes: batch and sequence lengths vary).

    sentence-transformers calls the Hugging Face model's ``forward`` method directly, so the method itself is
    replaced (the module tree and its ``state_dict`` keys stay as they are). Returns a function that restores the
    eager ``forward`` (call it before saving or exporting).
    """
    import torch

    encoder = getattr(model[0], "model", None) or model[0].auto_model
    encoder.forward = torch.compile(encoder.forward, dynamic=True)

    def restore() -> None:
        del encoder.forward  # the instance attribute shadows the class method

    return restore


def autocast_dtype(cfg: TrainConfig, device: str) -> torch.dtype | None:
    """The autocast dtype of ``cfg.precision`` on ``device``; None: fp32, no autocast.

    Raises:
        ConfigError: fp16 on a device other than CUDA.
    """
    import torch

    if cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if cfg.precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float16


def make_optimizer(model: SentenceTransformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with ``cfg.weight_decay`` on weight matrices only (biases and LayerNorm weights are not decayed), each
    layer's learning rate scaled by ``cfg.layer_decay`` (:mod:`.layer_decay`; 1 = one learning rate)."""
    import torch

    from embedforge.stages.train.layer_decay import param_groups

    groups = param_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.layer_decay)
    fused = model.device.type == "cuda"  # one kernel per parameter group instead of a loop over tensors
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused)


def contrastive_loss(model: SentenceTransformer, cfg: TrainConfig) -> torch.nn.Module:
    """InfoNCE at ``cfg.temperature`` (symmetric, hardness-weighted as set), summed over the prefixes of
    ``cfg.matryoshka_dims`` when there are any (:class:`~embedforge.stages.train.losses.MatryoshkaLoss`).

    Raises:
        InputError: A Matryoshka dimension is more than the model's embedding width.
    """
    from embedforge.retrieval.encode import embedding_dim
    from embedforge.stages.train.losses import InfoNCELoss, MatryoshkaLoss

    loss = InfoNCELoss(cfg.temperature, cfg.symmetric_loss, cfg.hardness)
    if not cfg.matryoshka_dims:
        return loss
    width = embedding_dim(model)
    if width and cfg.matryoshka_dims[0] > width:
        raise InputError(f"train.matryoshka_dims {cfg.matryoshka_dims}: {cfg.matryoshka_dims[0]} is more than the "
                         f"model's {width} dimensions; use dimensions <= {width}, e.g. [{width}, {width // 2}, "
                         f"{width // 4}]")
    return MatryoshkaLoss(loss, cfg.matryoshka_dims, cfg.matryoshka_weights or None)


def make_stepper(model: SentenceTransformer, cfg: TrainConfig, prompts: PromptsConfig, steps: int,
                 dist: DistContext) -> Stepper:
    """The :class:`~embedforge.stages.train.step.Stepper` of a run of ``steps`` steps: :func:`contrastive_loss`,
    :func:`make_optimizer`, warm-up over ``cfg.warmup_ratio`` of the steps then ``cfg.lr_schedule``'s decay, the
    precision of :func:`autocast_dtype`, the micro-batch token budget of the model's device and rows weighted by
    grade (``cfg.grade_power``)."""
    import torch
    from transformers import get_scheduler

    from embedforge.stages.train import memory, packing
    from embedforge.stages.train.cached import make_grad_cache

    packing.enable(model, cfg.packing)  # embed() packs the micro-batches of a model that allows it
    optimizer = make_optimizer(model, cfg)
    sharded = dist.enabled and cfg.sharding == "fsdp"
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=round(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    amp_dtype = autocast_dtype(cfg, str(model.device))
    total = memory.device_bytes(model.device)
    capacity = None if total is None else memory.plain_step_tokens(model, cfg.gradient_checkpointing, total)
    return Stepper(
        model=model,
        loss_fn=contrastive_loss(model, cfg),
        optimizer=optimizer,
        scheduler=scheduler,
        query_prompt=prompts.query or None,
        document_prompt=prompts.document or None,
        max_grad_norm=cfg.max_grad_norm,
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        device_type=model.device.type,
        micro_batch_tokens=cfg.resolved_micro_batch_tokens(model.device.type),
        dist=dist,
        grad_cache=make_grad_cache(cfg, model.device.type, sharded, max_plain_tokens=capacity),
        sharded=sharded,
        grade_power=cfg.grade_power,
    )

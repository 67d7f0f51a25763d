"""Contrastive fine-tuning: a compact PyTorch loop over mined ``anchor, positive, negative_1..n`` rows.

The loop is deliberately small (no ``SentenceTransformerTrainer``) so its step can be tuned for GPU throughput:

* batches from :func:`no_duplicate_batches` (no text twice among a batch's anchors and positives, like
  sentence-transformers' ``NoDuplicatesBatchSampler``), shuffled per epoch from the seed;
* :func:`embed` is the training-time forward, token for token what ``model.encode(texts, prompt_name=...,
  normalize_embeddings=True)`` does later (``model.preprocess`` with the prompt, forward, L2-normalise), so the
  saved model reproduces the embeddings it was trained on. Anchors get the ``query`` prompt, positives and
  negatives the ``document`` prompt;
* :class:`embedforge.losses.InfoNCELoss` over [all positives ; all hard negatives] of the batch, with
  :func:`embedforge.losses.false_negative_mask` removing candidates that are known positives of the anchor;
* AdamW (no decay on biases/LayerNorm), linear warm-up + cosine decay, gradient clipping, bf16 autocast on CUDA;
* optionally (``base_weight`` > 0) WiSE-FT: the saved weights are interpolated back towards the base model's.

The result is a sentence-transformers folder (``SentenceTransformer(path)`` loads it) whose
``config_sentence_transformers.json`` holds the prompts, plus ``manifest.json``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedforge import contracts, distributed
from embedforge.config import DEFAULT_BASE_MODEL, PromptsConfig, TrainConfig
from embedforge.contracts import Manifest, StageTimer, TrainExample
from embedforge.distributed import DistContext, Shard
from embedforge.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.tokens import TokenCache

log = logging.getLogger(__name__)

STAGE = "train"


# ------------------------------------------------------------------------------------------------ batching
def no_duplicate_batches(examples: list[TrainExample], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of batches (row indices) in which no text appears twice among the anchors and positives.

    Rows are visited in a seeded random order; a row whose anchor or positive is already in the batch being
    filled waits for a later batch (the algorithm of sentence-transformers' ``NoDuplicatesBatchSampler``). Every
    row appears exactly once per epoch; the last batches may be smaller.

    Args:
        examples: Training rows.
        batch_size: Rows per batch.
        seed: Shuffle seed (use ``seed + epoch`` for a different order each epoch).

    Returns:
        A list of batches, each a list of row indices.
    """
    remaining = np.random.default_rng(seed).permutation(len(examples)).tolist()
    batches: list[list[int]] = []
    while remaining:
        batch: list[int] = []
        seen: set[str] = set()
        skipped: list[int] = []
        pos = 0
        while pos < len(remaining) and len(batch) < batch_size:
            i = remaining[pos]
            pos += 1
            ex = examples[i]
            if ex.anchor in seen or ex.positive in seen:
                skipped.append(i)  # waits, in order, for a later batch
                continue
            batch.append(i)
            seen.update((ex.anchor, ex.positive))
        batches.append(batch)
        remaining = skipped + remaining[pos:]
    return batches


def plan_steps(examples: list[TrainExample], batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """All batches of the run: whole epochs of :func:`no_duplicate_batches` (epoch ``e`` shuffled with
    ``seed + e``), cut after ``round(epochs x batches per epoch)`` steps, so fractional epochs work."""
    first = no_duplicate_batches(examples, batch_size, seed)
    total = max(1, round(epochs * len(first)))
    plan = list(first)
    epoch = 1
    while len(plan) < total:
        plan.extend(no_duplicate_batches(examples, batch_size, seed + epoch))
        epoch += 1
    return plan[:total]


@dataclass
class Batch:
    """Texts of one step, in loss order, and the false-negative mask ``(B, B + N)`` (None: texts only, e.g. one
    rank's share of a distributed batch, whose loss uses the global batch's mask)."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str]
    mask: torch.Tensor | None

    @property
    def candidates(self) -> list[str]:
        return self.positives + self.negatives


def collate(examples: list[TrainExample], rows: list[int], known_positives: dict[str, set[str]] | None) -> Batch:
    """Gather a batch: flat hard negatives (rows may have different numbers) and its false-negative mask.

    Args:
        examples: All training rows.
        rows: Indices of this batch's rows.
        known_positives: anchor text -> every positive text that anchor has in the data set; None: no mask
            (the texts are all that is needed).
    """
    from embedforge.losses import false_negative_mask

    anchors = [examples[i].anchor for i in rows]
    positives = [examples[i].positive for i in rows]
    negatives = [n for i in rows for n in examples[i].negatives]
    mask = None
    if known_positives is not None:
        mask = false_negative_mask(positives, positives + negatives, [known_positives.get(a, set()) for a in anchors])
    return Batch(anchors=anchors, positives=positives, negatives=negatives, mask=mask)


# ------------------------------------------------------------------------------------------------ forward
def embed(
    model: SentenceTransformer,
    texts: list[str],
    prompt: str | None,
    max_tokens: int = 4096,
    cache: TokenCache | None = None,
) -> torch.Tensor:
    """Training-time embeddings: what ``model.encode(texts, prompt=prompt, normalize_embeddings=True)`` computes,
    with gradients. Returns float32 ``(len(texts), dim)``, L2-normalised, rows in the order of ``texts``.

    Texts are forwarded in length-sorted micro-batches of at most ``max_tokens`` padded tokens
    (:func:`embedforge.tokens.micro_batches`), so short texts are not padded to the longest passage of the whole
    contrastive batch: the same embeddings (attention masks make each row independent of its padding) for far
    fewer FLOPs.

    Args:
        model: The model being trained (on its device).
        texts: Texts to embed (without prompt).
        prompt: Prefix to prepend (the model's ``query``/``document`` prompt); ``""``/``None`` for none.
        max_tokens: Padded tokens per forward pass (texts x longest text of the micro-batch).
        cache: Token rows of the texts under ``prompt`` (:class:`embedforge.tokens.TokenCache`); made here if
            not given.
    """
    import torch
    import torch.nn.functional as F

    from embedforge.tokens import TokenCache, micro_batches

    if not texts:  # e.g. a rank with no rows of a small last batch: (0, dim), still part of the autograd graph
        anchor = next(p for p in model.parameters() if p.requires_grad)
        return torch.zeros(0, model.get_sentence_embedding_dimension(), device=anchor.device) + 0.0 * anchor.sum()
    cache = cache if cache is not None else TokenCache(model, prompt)
    cache.add(texts)
    groups = micro_batches([cache.length(t) for t in texts], max_tokens)
    parts = [model(cache.features([texts[i] for i in g], model.device))["sentence_embedding"].float() for g in groups]
    order = [i for g in groups for i in g]
    emb = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return F.normalize(emb[inverse.to(emb.device, non_blocking=True)], p=2, dim=1)


def _autocast_dtype(cfg: TrainConfig, device: str):
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


@dataclass
class Stepper:
    """One optimisation step: forward both towers, loss, backward, clip, optimizer + scheduler step.

    Texts are tokenised once per tower (:class:`embedforge.tokens.TokenCache`); :meth:`step` returns the loss as a
    device tensor so the loop does not wait for the GPU every step.
    """

    model: SentenceTransformer
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    query_prompt: str | None
    document_prompt: str | None
    max_grad_norm: float
    amp_dtype: object = None
    scaler: object = None
    device_type: str = "cpu"
    micro_batch_tokens: int = 4096
    dist: DistContext = field(default_factory=DistContext)
    query_tokens: TokenCache = field(init=False)
    document_tokens: TokenCache = field(init=False)

    def __post_init__(self) -> None:
        from embedforge.tokens import TokenCache

        self.query_tokens = TokenCache(self.model, self.query_prompt)
        self.document_tokens = TokenCache(self.model, self.document_prompt)

    def loss(self, batch: Batch, local: Batch | None = None, split: Shard | None = None) -> torch.Tensor:
        """The loss of ``batch``. Distributed: this rank embeds only ``local`` (its rows of ``split``, see
        :func:`embedforge.distributed.shard`) and the embeddings of all ranks are gathered into ``batch``'s order."""
        import torch

        from embedforge.distributed import gather

        part = local if local is not None else batch
        ctx = torch.autocast(self.device_type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        with ctx:
            q = embed(self.model, part.anchors, self.query_prompt, self.micro_batch_tokens, self.query_tokens)
            d = embed(self.model, part.candidates, self.document_prompt, self.micro_batch_tokens, self.document_tokens)
        b = len(part.anchors)
        p, n = d[:b], d[b:]
        if self.dist.enabled:
            q, p, n = (gather(q, self.dist, split.anchors), gather(p, self.dist, split.anchors),
                       gather(n, self.dist, split.negatives))
        mask = batch.mask.to(q.device, non_blocking=True) if batch.mask is not None else None
        return self.loss_fn(q, p, n, mask)

    def step(self, batch: Batch, local: Batch | None = None, split: Shard | None = None) -> torch.Tensor:
        import torch

        from embedforge.distributed import average_gradients

        loss = self.loss(batch, local, split)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            average_gradients(self.model.parameters(), self.dist)
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            average_gradients(self.model.parameters(), self.dist)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


@dataclass
class _LossLog:
    """Loss per step, kept on the device and read back once per ``window`` steps (one GPU sync per window)."""

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


# ------------------------------------------------------------------------------------------------ setup
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def load_for_training(base_model: str, cfg: TrainConfig, prompts: PromptsConfig) -> SentenceTransformer:
    """A fresh SentenceTransformer on ``cfg.device`` with our prompts and ``max_seq_length``.

    Args:
        base_model: Model folder or id.
        cfg: Training settings (device, max_seq_length).
        prompts: Query/document prefixes, saved in the model as prompts ``query``/``document``.
    """
    from sentence_transformers import SentenceTransformer

    from embedforge.encode import pick_device, resolve_model_path

    try:
        model = SentenceTransformer(resolve_model_path(base_model), device=pick_device(cfg.device))
    except OSError as exc:
        raise ConfigError(f"cannot load base model {base_model!r}: {exc}") from None
    model.prompts = {"query": prompts.query, "document": prompts.document}
    model.default_prompt_name = None
    model.max_seq_length = min(cfg.max_seq_length, _model_length_limit(model) or cfg.max_seq_length)
    return model


# Architectures whose position ids start after the padding index: two positions are not usable.
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "xlm-roberta-xl"}


def _model_length_limit(model: SentenceTransformer) -> int | None:
    """Longest input the architecture accepts (its position embeddings), or None if unknown."""
    config = getattr(model.transformers_model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    return int(positions) - (2 if getattr(config, "model_type", "") in _POSITION_OFFSET_MODELS else 0)


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


def _optimizer(model: SentenceTransformer, cfg: TrainConfig):
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)  # biases and LayerNorm weights are not decayed
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = model.device.type == "cuda"  # one kernel per parameter group instead of a loop over tensors
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused)


#: WiSE-FT weight used when ``TrainConfig.base_weight`` is unset and most rows come from the offline generator.
OFFLINE_BASE_WEIGHT = 0.5


def resolve_base_weight(cfg: TrainConfig, mined_dir: str | Path, n_examples: int) -> float:
    """``cfg.base_weight`` if set; else :data:`OFFLINE_BASE_WEIGHT` when the mine manifest says more than half of
    the rows come from offline-generator pairs, else 0."""
    if cfg.base_weight is not None:
        return cfg.base_weight
    if not (Path(mined_dir) / contracts.MANIFEST).is_file():
        return 0.0  # rows from elsewhere than the mine stage: nothing says they are generated
    offline = contracts.read_manifest(mined_dir).counts.get("offline_examples", 0)
    return OFFLINE_BASE_WEIGHT if 2 * offline > n_examples else 0.0


def snapshot_weights(model: "SentenceTransformer") -> dict[str, "torch.Tensor"]:
    """A CPU copy of the model's floating-point parameters and buffers (the base weights, before training)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if v.is_floating_point()}


def interpolate_weights(model: "SentenceTransformer", base: dict[str, "torch.Tensor"], base_weight: float) -> None:
    """WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): in place,
    ``theta = (1 - base_weight) * theta_finetuned + base_weight * theta_base``.

    Weight-space interpolation between the fine-tuned model and the model it started from keeps most of the
    in-domain gain while giving back robustness the fine-tuning traded away — the guard for noisy synthetic pairs.
    """
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k in base:
                v.mul_(1.0 - base_weight).add_(base[k].to(v.device, v.dtype), alpha=base_weight)


# ------------------------------------------------------------------------------------------------ entry point
def run(
    mined_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    base_model: str = DEFAULT_BASE_MODEL,
    prompts: PromptsConfig | None = None,
) -> Manifest | None:
    """Fine-tune ``base_model`` on the mined rows and save a sentence-transformers folder.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains one replica on its share of each global batch
    (:mod:`embedforge.distributed`); rank 0 saves the model and returns the manifest, the others return None.

    Args:
        mined_dir: Mine artifact folder holding ``train.jsonl`` (``anchor, positive, negative_1..n``).
        out_dir: Output folder: the saved model (``SentenceTransformer(out_dir)`` loads it) + ``manifest.json``.
        cfg: Training settings (epochs, batch_size, learning_rate, temperature, ...).
        base_model: Model folder or id to start from.
        prompts: Query/document prefixes used in training and saved in the model.

    Returns:
        The written manifest (counts: examples, steps, epochs; final_loss, loss_history, seconds,
        examples_per_second, device).

    Raises:
        InputError: ``train.jsonl`` is missing or has fewer than 2 rows.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from embedforge.losses import InfoNCELoss

    timer = StageTimer(STAGE)
    prompts = prompts or PromptsConfig()
    examples = contracts.read_train_examples(mined_dir)
    if len(examples) < 2:
        raise InputError(
            f"{Path(mined_dir) / contracts.TRAIN_FILE} has {len(examples)} training rows; contrastive training needs "
            "at least 2 (add documents or pairs upstream)"
        )
    known: dict[str, set[str]] = {}
    for ex in examples:
        known.setdefault(ex.anchor, set()).add(ex.positive)

    dist_ctx = distributed.from_env()
    if dist_ctx.enabled:  # under torchrun: one process per device, the global batch split over them
        from embedforge.encode import pick_device

        cfg = cfg.model_copy(update={"device": distributed.init(dist_ctx, pick_device(cfg.device))})
    seed_everything(cfg.seed)
    model = load_for_training(base_model, cfg, prompts)
    seed_everything(cfg.seed + dist_ctx.rank)  # same initial weights everywhere, different dropout per rank
    device = str(model.device)
    base_weight = resolve_base_weight(cfg, mined_dir, len(examples))
    base_state = snapshot_weights(model) if base_weight > 0 else None
    plan = plan_steps(examples, cfg.batch_size, cfg.epochs, cfg.seed)
    optimizer = _optimizer(model, cfg)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * len(plan)), len(plan))
    amp_dtype = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    stepper = Stepper(
        model=model,
        loss_fn=InfoNCELoss(cfg.temperature),
        optimizer=optimizer,
        scheduler=scheduler,
        query_prompt=prompts.query or None,
        document_prompt=prompts.document or None,
        max_grad_norm=cfg.max_grad_norm,
        amp_dtype=amp_dtype,
        scaler=scaler,
        device_type=model.device.type,
        micro_batch_tokens=cfg.resolved_micro_batch_tokens(model.device.type),
        dist=dist_ctx,
    )
    # tokenise up front what this process will embed: every row, or under torchrun only this rank's shares
    embedded = examples if not dist_ctx.enabled else [
        examples[i] for i in sorted({i for rows in plan for i in distributed.shard(rows, dist_ctx).mine})]
    stepper.query_tokens.add(ex.anchor for ex in embedded)
    stepper.document_tokens.add(t for ex in embedded for t in (ex.positive, *ex.negatives))
    log.info(
        "train: %d rows, %d steps (%.2f epochs, batch %d) on %s%s, precision %s",
        len(examples), len(plan), cfg.epochs, cfg.batch_size, device,
        f" (rank {dist_ctx.rank} of {dist_ctx.world})" if dist_ctx.enabled else "", amp_dtype or "fp32",
    )
    losses = _LossLog(window=max(1, len(plan) // 10))
    restore_eager = compile_encoder(model) if cfg.compile else None
    model.train()
    rows_seen = 0
    started = time.perf_counter()
    bar = tqdm(plan, desc="train", unit="step", disable=not dist_ctx.is_main)
    for step, rows in enumerate(bar, start=1):
        rows_seen += len(rows)
        if dist_ctx.enabled:
            split = distributed.shard(rows, dist_ctx, lambda i: len(examples[i].negatives))
            loss = stepper.step(collate(examples, split.order, known), collate(examples, split.mine, None), split)
        else:
            loss = stepper.step(collate(examples, rows, known))
        if losses.add(step, loss):
            bar.set_postfix(loss=f"{losses.last:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    losses.flush(len(plan))
    train_seconds = time.perf_counter() - started
    model.eval()
    if restore_eager is not None:
        restore_eager()
    if base_state is not None:
        interpolate_weights(model, base_state, base_weight)

    if not dist_ctx.is_main:  # the replicas are identical: rank 0 saves
        distributed.shutdown(dist_ctx)
        return None
    out = Path(out_dir)
    model.save(str(out), create_model_card=False)
    steps_per_epoch = len(no_duplicate_batches(examples, cfg.batch_size, cfg.seed))
    manifest = timer.write_manifest(
        out,
        counts={"examples": len(examples), "steps": len(plan), "epochs": math.ceil(len(plan) / steps_per_epoch)},
        inputs={"mined": mined_dir},
        config=cfg,
        base_model=base_model,
        prompts=prompts.model_dump(),
        final_loss=losses.history[-1]["loss"],
        loss_history=losses.history,
        train_seconds=round(train_seconds, 3),
        examples_per_second=round(rows_seen / max(train_seconds, 1e-9), 3),
        device=device,
        precision=str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32",
        base_weight=base_weight,
        processes=dist_ctx.world,
    )
    distributed.shutdown(dist_ctx)
    return manifest


def resolved_processes(cfg: TrainConfig) -> int:
    """``cfg.processes``, or one per visible CUDA device when 0 (1 without CUDA or when ``cfg.device`` is cpu)."""
    if cfg.processes:
        return cfg.processes
    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return 1
    return 1 if cfg.device.startswith("cuda:") else max(1, torch.cuda.device_count())


def launch(
    mined_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    base_model: str = DEFAULT_BASE_MODEL,
    prompts: PromptsConfig | None = None,
) -> Manifest:
    """:func:`run` in this process, or — when :func:`resolved_processes` > 1 and this is not already a torchrun
    worker — under ``torchrun --standalone --nproc-per-node N`` (``embedforge train`` in every process), then the
    manifest rank 0 wrote.

    Raises:
        InputError, ConfigError: as :func:`run`; a failed worker raises :class:`~embedforge.errors.ConfigError`
            with the tail of its output.
    """
    import subprocess
    import sys
    import tempfile

    import yaml

    prompts = prompts or PromptsConfig()
    n = resolved_processes(cfg)
    if n <= 1 or distributed.from_env().enabled:
        return run(mined_dir, out_dir, cfg, base_model=base_model, prompts=prompts)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "train.yaml"
        config_file.write_text(yaml.safe_dump({"base_model": base_model, "prompts": prompts.model_dump(),
                                               "train": cfg.model_dump(mode="json", exclude_none=True)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "embedforge.cli", "train", "--mined", str(mined_dir), "--out", str(out_dir),
               "--config", str(config_file)]
        log.info("train: %d processes: %s", n, " ".join(cmd))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"distributed training ({n} processes) failed with exit code {proc.returncode}; "
                          f"last output:\n{proc.stdout[-3000:]}")
    return contracts.read_manifest(out_dir)

"""Sequence packing for the training forward: no FLOPs spent on padding.

A contrastive batch's texts vary in length (short titles and claims beside passages at the length cap), so a
padded forward computes many more tokens than it uses. :class:`Packer` instead concatenates a micro-batch's texts into
rows of about :data:`ROW_TOKENS` tokens (first-fit decreasing), each text with its own ``position_ids`` starting at
0, and keeps attention inside each text:

* ``position_ids`` strategy (decoders: Llama, Qwen2/3, Mistral, ... in transformers 5): no attention mask is passed;
  ``transformers.masking_utils`` sees the restarting ``position_ids``, builds the causal mask per packed text (sdpa,
  eager) or a block-sparse ``BlockMask`` (flex_attention), and flash-attention uses them as ``cu_seqlens``;
* ``block_mask`` strategy (encoders: BERT/RoBERTa-style, whose bidirectional mask ignores ``position_ids``): a 4-D
  boolean mask that lets each token see exactly the tokens of its own text, passed through as-is by
  ``masking_utils``; the restarting ``position_ids`` give each text the position embeddings it has alone.

The tail of a row that no text fills is a separate dummy segment whose outputs are dropped. The real tokens'
outputs are then flattened to ``(1, tokens, dim)`` with ``cu_seq_lens_q`` and handed to the model's own
``Pooling`` module, which pools such flattened input per text (its FlashAttention-2 path: mean, CLS, last token,
prompt exclusion alike), and on through the modules after it (Dense, Normalize). So the result is, text for text,
``model(features)["sentence_embedding"]`` of the padded batch.

Whether a model gets this right is not assumed from its name: :func:`probe` runs both strategies on a few texts
and keeps the first whose embeddings equal the padded forward's. :func:`enable` records the outcome for a model
(``train.packing``), and :func:`packer_of` is what :func:`embedforge.stages.train.step.embed` asks.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from embedforge.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.stages.train.tokens import TokenCache

log = logging.getLogger(__name__)

#: Tokens per packed row (or the longest text, if longer). The attention of a packed row costs as much as a dense
#: row of this width (sdpa with a mask does not skip masked blocks), padding waste falls as rows get wider: 512 keeps
#: both small for texts of <= 256 tokens (little row-tail padding).
ROW_TOKENS = 512

Strategy = Literal["position_ids", "block_mask"]

_PACKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PROBE_TEXTS = ["Packing probe.", "A longer probe sentence, so that the packed texts differ in length and position.",
                "x", "Another probe text of some middling length."]


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows of at most ``row_tokens`` tokens (an item longer than
    that gets a row of its own). Every index appears exactly once; rows are in the order they were opened."""
    free = np.zeros(0, dtype=np.int64)
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = np.flatnonzero(free >= lengths[i])
        if len(fits):
            free[fits[0]] -= lengths[i]
            rows[fits[0]].append(i)
        else:
            free = np.append(free, max(row_tokens - lengths[i], 0))
            rows.append([i])
    return rows


@dataclass(frozen=True)
class Packer:
    """Packed forward of a SentenceTransformer whose first module is a Hugging Face ``Transformer`` and second its
    ``Pooling`` (see the module docstring for the two strategies)."""

    strategy: Strategy
    row_tokens: int = ROW_TOKENS

    def embed(self, model: SentenceTransformer, cache: TokenCache, texts: Sequence[str]) -> torch.Tensor:
        """``model(features)["sentence_embedding"]`` of ``texts`` (tokenised by ``cache``), computed on packed rows;
        rows of the result in the order of ``texts``, dtype as the model outputs it."""
        cache.add(texts)
        tokens = [cache.row(t) for t in texts]
        lengths = [len(r["input_ids"]) for r in tokens]
        rows = pack_rows(lengths, max(self.row_tokens, max(lengths)))
        width = -(-max(sum(lengths[i] for i in row) for row in rows) // 16) * 16  # SDPA kernels want 16-aligned
        keys = [k for k in tokens[0] if k != "attention_mask"]
        arrays = {k: np.zeros((len(rows), width), dtype=tokens[0][k].dtype) for k in keys}
        if "input_ids" in arrays:
            arrays["input_ids"].fill(cache.pad_id)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        segment = np.empty((len(rows), width), dtype=np.int64)
        start = np.zeros(len(texts), dtype=np.int64)  # flat index of each text's first token
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                for k in keys:
                    arrays[k][r, at : at + n] = tokens[i][k]
                positions[r, at : at + n] = np.arange(n)
                segment[r, at : at + n] = i
                start[i] = r * width + at
                at += n
            positions[r, at:] = np.arange(width - at)  # the unused tail: a dummy text of its own
            segment[r, at:] = len(texts) + r
        device = model.device
        features = {k: _to_device(a, device) for k, a in arrays.items()}
        features["position_ids"] = _to_device(positions, device)
        features["use_cache"] = False  # transformers < 5.2x looks for packed position_ids only without a KV cache
        if self.strategy == "block_mask":
            seg = _to_device(segment, device)
            features["attention_mask"] = (seg[:, :, None] == seg[:, None, :])[:, None]
        features.update(cache.extras)
        hidden = model[0](features)["token_embeddings"]
        cu = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.repeat(start - cu[:-1], lengths) + np.arange(cu[-1])  # real tokens, text after text
        pooled: dict = {k: v for k, v in cache.extras.items()}
        pooled["token_embeddings"] = hidden.reshape(-1, hidden.shape[-1])[_to_device(flat, device)].unsqueeze(0)
        pooled["cu_seq_lens_q"] = _to_device(cu.astype(np.int32), device)
        for module in list(model)[1:]:
            pooled = module(pooled)
        return pooled["sentence_embedding"]


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    t = torch.from_numpy(a)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def probe(model: SentenceTransformer, row_tokens: int = ROW_TOKENS) -> Packer | None:
    """The first :class:`Packer` strategy whose embeddings of a few probe texts equal the padded forward's (eval
    mode, no autocast, fp32 tolerance), or None: the model's structure or attention does not allow packing."""
    import torch

    from embedforge.stages.train.tokens import TokenCache

    modules = list(model)
    if len(modules) < 2 or type(modules[1]).__name__ != "Pooling" or not hasattr(modules[0], "auto_model"):
        return None
    cache = TokenCache(model, None)
    cache.add(_PROBE_TEXTS)
    if not cache.exact:
        return None
    was_training, tf32 = model.training, torch.backends.cuda.matmul.allow_tf32
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 on a GPU too, so the tolerance can be tight
    try:
        with torch.no_grad():
            ref = model(cache.features(_PROBE_TEXTS, model.device))["sentence_embedding"].float()
            for strategy in ("position_ids", "block_mask"):
                packer = Packer(strategy, row_tokens)
                try:
                    got = packer.embed(model, cache, _PROBE_TEXTS).float()
                except (TypeError, ValueError, RuntimeError) as exc:  # the model rejects the packed inputs
                    log.debug("packing strategy %s fails on this model: %s", strategy, exc)
                    continue
                if torch.allclose(got, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max())):
                    return packer
    finally:
        model.train(was_training)
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return None


def enable(model: SentenceTransformer, mode: Literal["auto", "on", "off"]) -> Packer | None:
    """Decide ``train.packing`` for ``model`` and remember it (:func:`packer_of`).

    ``off``: pad. ``auto``: pack on CUDA where :func:`probe` finds a strategy (on a CPU the dense attention over a
    packed row costs more than the padding it saves). ``on``: pack wherever the probe finds one.

    Raises:
        ConfigError: ``on`` for a model that cannot be packed.
    """
    _PACKERS.pop(model, None)
    if mode == "off" or (mode == "auto" and model.device.type != "cuda"):
        return None
    packer = probe(model)
    if packer is None:
        arch = type(getattr(model[0], "auto_model", model[0])).__name__
        if mode == "on":
            raise ConfigError(f"train.packing is 'on' but {arch} gives different embeddings on packed sequences "
                              "(or its folder is not Transformer + Pooling); set train.packing to auto or off")
        log.info("train.packing auto: %s does not support packed sequences; padding instead", arch)
        return None
    log.info("train.packing: packed rows of %d tokens (%s strategy)", packer.row_tokens, packer.strategy)
    _PACKERS[model] = packer
    return packer


def packer_of(model: SentenceTransformer) -> Packer | None:
    """The :class:`Packer` :func:`enable` chose for ``model``; None: pad."""
    return _PACKERS.get(model)

"""Sharded data-parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) under the torchrun path.

``train.sharding: fsdp`` keeps the contrastive scheme of :mod:`embedforge.stages.train.distributed` (each rank embeds its
rows, embeddings gathered with gradient, every rank the same global loss) but shards the weights, gradients and
AdamW states over the ranks instead of replicating them; FSDP reduce-scatters (averages) the gradients during
backward, so :func:`~embedforge.stages.train.distributed.average_gradients` is skipped.

What is sharded, and why not more: the ranks make *different numbers* of forward passes per step (token-budget
micro-batches of their own texts, cached chunks), and FSDP issues collectives per forward/backward of each
sharded module, so per-layer sharding with resharding after forward (ZeRO-3) would mismatch the collectives across
ranks and hang. The model is therefore one FSDP unit, ``reshard_after_forward=False``: the first forward of a
step all-gathers the weights once, later forwards reuse them, the step's last backward reduce-scatters the
gradients (earlier backwards of a cached step accumulate without communication, :func:`last_backward`). At rest
(optimizer step, between steps) weights, gradients and optimizer states are sharded — ZeRO-2/3-like for the
optimizer, which is most of the memory of AdamW training (16 bytes per fp32 weight: weight, gradient, two moments).
Checked on CPU/Gloo in tests/train/test_distributed.py (same gradients as the single-process step).

Every FSDP step is a cached step (:mod:`embedforge.stages.train.cached`, whatever ``train.cached`` says): its
collectives per step are fixed (one all-gather at the first forward, the Gather of embeddings, one reduce-scatter
at the last backward), and a rank without rows in a small last batch runs one idle forward/backward to take part.
Saving: :func:`full_model` gathers the full state dict to rank 0 into a plain model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from embedforge.stages.train.distributed import DistContext

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def shard(model: SentenceTransformer, ctx: DistContext) -> None:
    """``fully_shard`` ``model`` in place over the ``ctx.world`` ranks of this host (one FSDP unit, module
    docstring). Call after the process group is initialised and before the optimizer is made."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(model.device.type, (ctx.world,))
    fully_shard(model, mesh=mesh, reshard_after_forward=False)


def last_backward(model: SentenceTransformer, last: bool) -> None:
    """Before each backward of a step made of several (cached chunks): only the ``last`` one reduce-scatters the
    accumulated gradients and reshards the weights; the others accumulate locally (no collective, so the ranks
    may run different numbers of them)."""
    model.set_requires_gradient_sync(last)
    model.set_reshard_after_backward(last)


def full_model(model: SentenceTransformer, ctx: DistContext, load_plain: Callable[[], SentenceTransformer]
               ) -> SentenceTransformer | None:
    """The trained weights gathered into a plain (unsharded) model on rank 0, made by ``load_plain`` (the base
    model as loaded for training); None on the other ranks. Every rank must call it (collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ctx.is_main:
        return None
    plain = load_plain()
    plain.to(next(iter(state.values())).dtype)
    plain.load_state_dict(state)
    return plain

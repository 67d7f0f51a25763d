"""Data-parallel training across processes (``torchrun``): one global contrastive batch split over the ranks.

Contrastive losses need every anchor to see every candidate of the batch, so plain DDP (each rank its own smaller
batch and loss) would shrink the in-batch negatives by the number of GPUs. Instead:

* every rank builds the same global batch (the step plan is seeded), embeds only its share of the rows
  (:func:`shard`: rows ``rank::world``), and :func:`gather` concatenates all ranks' embeddings **with gradient**;
* every rank then computes the identical global loss; the gather's backward sums the gradient each rank holds for
  the embeddings a rank produced, so after :func:`average_gradients` (all-reduce mean) every rank holds exactly the
  single-process gradient of the global batch, and the replicas stay identical step after step.

(DDP's wrapper is not used: a step makes several forward passes — micro-batches of two towers — before its one
backward, which DDP's reducer does not allow.) With ``WORLD_SIZE`` unset or 1 nothing here is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``rank`` 0 of ``world`` 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistContext:
    """The context torchrun describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (none: single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(ctx: DistContext, device: str) -> str:
    """Join the process group (NCCL on CUDA, Gloo on CPU); returns this rank's device (``cuda:<local_rank>``)."""
    import torch
    import torch.distributed as dist

    if not ctx.enabled:
        return device
    if device.startswith("cuda"):
        torch.cuda.set_device(ctx.local_rank)
        device = f"cuda:{ctx.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def shutdown(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclass(frozen=True)
class Shard:
    """One global batch split over the ranks.

    ``order`` lists rank 0's rows, then rank 1's, ... — the order in which :func:`gather` returns embeddings;
    ``mine`` are this rank's rows; ``anchors[r]`` / ``negatives[r]`` how many anchors / hard negatives rank ``r``
    embeds (known to every rank, so gathering needs no size exchange and no host-device synchronisation).
    """

    order: list[int]
    mine: list[int]
    anchors: list[int]
    negatives: list[int]


def shard(rows: list[int], ctx: DistContext, negatives_of: Callable[[int], int] = lambda i: 0) -> Shard:
    """Split ``rows`` round-robin (rank ``r`` takes ``rows[r::world]``); ``negatives_of(row)`` counts its negatives."""
    parts = [rows[r :: ctx.world] for r in range(ctx.world)]
    return Shard(order=[i for p in parts for i in p], mine=parts[ctx.rank], anchors=[len(p) for p in parts],
                 negatives=[sum(negatives_of(i) for i in p) for p in parts])


def embedded_rows(n_examples: int, plan: list[list[int]], ctx: DistContext) -> list[int]:
    """The rows this process embeds in a run of ``plan``: every row, or under torchrun only its shares of the
    planned batches."""
    if not ctx.enabled:
        return list(range(n_examples))
    return sorted({i for rows in plan for i in shard(rows, ctx).mine})


def broadcast(value: object, ctx: DistContext) -> object:
    """Rank 0's ``value`` on every rank (pickled; identity when not distributed): decisions one rank takes for all,
    so no rank can go its own way on a tie its floating-point noise broke differently."""
    import torch.distributed as dist

    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks(flag: bool, ctx: DistContext) -> bool:
    """True when ``flag`` is true on every rank (also a barrier; ``flag`` itself when not distributed): an action
    every rank took part in counts only if it worked everywhere."""
    import torch.distributed as dist

    if not ctx.enabled:
        return flag
    flags: list = [None] * ctx.world
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


class _Gather:
    """Autograd all-gather of variable-length ``(n_r, d)`` tensors (built lazily: torch is imported on use)."""

    fn = None

    @classmethod
    def get(cls):
        if cls.fn is None:
            import torch
            import torch.distributed as dist

            class Gather(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
                    padded = x.new_zeros((max(counts), *x.shape[1:]))
                    padded[: x.shape[0]] = x
                    out = [torch.empty_like(padded) for _ in counts]
                    dist.all_gather(out, padded)
                    rank = dist.get_rank()
                    ctx.span = (sum(counts[:rank]), counts[rank])
                    return torch.cat([o[:n] for o, n in zip(out, counts)])

                @staticmethod
                def backward(ctx, grad: torch.Tensor):
                    grad = grad.contiguous().clone()
                    dist.all_reduce(grad)  # every rank computed the same loss: sum their gradients
                    start, n = ctx.span
                    return grad[start : start + n], None

            cls.fn = Gather
        return cls.fn


def gather(x: torch.Tensor, ctx: DistContext, counts: list[int] | None = None) -> torch.Tensor:
    """All ranks' ``x`` (rank ``r`` holding ``counts[r]`` rows) concatenated in rank order, differentiable;
    identity when not distributed."""
    if not ctx.enabled:
        return x
    if counts is None or len(counts) != ctx.world or counts[ctx.rank] != x.shape[0]:
        raise ValueError(f"gather: counts {counts} do not describe {ctx.world} ranks with {x.shape[0]} rows here")
    return _Gather.get().apply(x, counts)


def average_gradients(params, ctx: DistContext) -> None:
    """All-reduce mean of the gradients, in one flat buffer."""
    import torch
    import torch.distributed as dist

    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:  # a rank with no rows in this batch has no gradient: it contributes zeros
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(ctx.world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()

"""Cached contrastive batches (GradCache): a batch of any size in the activation memory of one chunk.

A contrastive loss needs every embedding of the batch at once, so a plain step keeps the activations of every text
of the batch until its backward; memory grows with batch x texts per row x sequence length. The cached step
(Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
https://arxiv.org/abs/2101.06983) splits it in three:

1. embed every text **without** autograd, chunk by chunk (chunks of at most ``chunk_tokens`` padded tokens,
   length-sorted, :func:`embedforge.stages.train.tokens.micro_batches`), remembering the RNG state before each chunk;
2. compute the loss of the full batch from those embeddings (false-negative mask, and under torchrun the gather of
   every rank's embeddings, exactly as :meth:`Stepper.contrast <embedforge.stages.train.step.Stepper.contrast>` does) and
   back-propagate it only as far as the embeddings: d(loss)/d(embedding) of every text;
3. re-embed chunk by chunk **with** autograd, restoring each chunk's RNG state first so dropout draws the same
   masks as in 1., and back-propagate the cached embedding gradients into the weights; one chunk's activations
   are alive at a time.

The parameter gradients equal the plain step's for the same dropout masks (the chain rule, split at the
embeddings); tests/train/test_train_cached.py checks it. With ``chunk_tokens`` equal to the step's micro-batch budget
the chunks are exactly the plain step's forwards, in the same order, so even the dropout masks are the plain
step's. The price is one extra forward pass per step (about a third more compute), so the step is used only where
memory asks for it (:attr:`GradCache.auto`). After the step the RNG stream is where the plain step leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedforge.config import TrainConfig
from embedforge.retrieval.encode import embedding_dim
from embedforge.stages.train.batching import Batch
from embedforge.stages.train.distributed import Shard
from embedforge.stages.train.fsdp import last_backward
from embedforge.stages.train.tokens import TokenCache, micro_batches

if TYPE_CHECKING:
    import torch

    from embedforge.stages.train.step import Stepper


def rng_state(device: torch.device) -> tuple:
    """The RNG state dropout draws from on ``device``: the CPU generator's, plus the CUDA device's on CUDA."""
    import torch

    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple, device: torch.device) -> None:
    """Restore a :func:`rng_state`."""
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class _Tower:
    """The texts one tower embeds in a step, their prompt and token cache, and the chunks they are embedded in
    (indices into ``texts`` and the RNG state before each chunk)."""

    texts: list[str]
    prompt: str | None
    tokens: TokenCache
    chunks: list[tuple[list[int], tuple]]


@dataclass
class GradCache:
    """The cached step of a :class:`~embedforge.stages.train.step.Stepper` (its ``grad_cache``).

    Attributes:
        chunk_tokens: Padded tokens per chunk (texts x longest text of the chunk); each chunk is forwarded by
            :func:`embedforge.stages.train.step.embed`, which may split it further into micro-batches.
        auto: Use the cached step only for batches of more than ``max_plain_tokens`` tokens (the plain step is
            faster where it fits); False: every step is cached.
        max_plain_tokens: See ``auto``: the plain step's capacity on the device
            (:func:`embedforge.stages.train.memory.plain_step_tokens`); None where the device's memory is unknown: four
            chunks.
    """

    chunk_tokens: int
    auto: bool = False
    max_plain_tokens: int | None = None

    def applies(self, stepper: Stepper, batch: Batch, local: Batch | None = None) -> bool:
        """Whether ``batch`` (this rank's ``local`` part under torchrun) takes the cached step."""
        if not self.auto:
            return True
        part = local if local is not None else batch
        tokens = 0
        for texts, cache in ((part.anchors, stepper.query_tokens), (part.candidates, stepper.document_tokens)):
            cache.add(texts)
            tokens += sum(cache.length(t) for t in texts)
        limit = self.max_plain_tokens if self.max_plain_tokens is not None else 4 * self.chunk_tokens
        return tokens > limit

    def backward(self, stepper: Stepper, batch: Batch, local: Batch | None = None, split: Shard | None = None
                 ) -> torch.Tensor:
        """Forward and backward of ``batch`` in chunks (module docstring); leaves the parameter gradients of
        ``stepper.model`` as the plain step's backward would (scaled by the fp16 scaler, not yet averaged over
        ranks) and returns the loss."""
        import torch

        part = local if local is not None else batch
        towers = [_Tower(part.anchors, stepper.query_prompt, stepper.query_tokens, []),
                  _Tower(part.candidates, stepper.document_prompt, stepper.document_tokens, [])]
        device = stepper.model.device
        with torch.no_grad():
            q, d = (self._embed_chunks(stepper, tower, device).requires_grad_() for tower in towers)
        after = rng_state(device)
        idle = _idle_forward(stepper) if stepper.sharded and not (towers[0].chunks or towers[1].chunks) else None
        loss = stepper.contrast(batch, q, d, split)
        stepper.scaled(loss).backward()  # stops at the embeddings: they are leaves
        if idle is not None:  # FSDP, no rows here: a zero gradient, but the backward's collectives must run
            last_backward(stepper.model, True)
            idle.backward()
        chunks = [(tower, emb, rows, state) for tower, emb in zip(towers, (q, d)) for rows, state in tower.chunks]
        for k, (tower, emb, rows, state) in enumerate(chunks):
            if stepper.sharded:  # FSDP: communicate in the last backward only (embedforge.stages.train.fsdp)
                last_backward(stepper.model, k == len(chunks) - 1)
            set_rng_state(state, device)
            with stepper.autocast():
                again = _embed(stepper, tower, rows)
            again.backward(emb.grad[torch.tensor(rows, device=emb.device)])
        set_rng_state(after, device)
        return loss.detach()

    def _embed_chunks(self, stepper: Stepper, tower: _Tower, device: torch.device) -> torch.Tensor:
        """Embeddings of every text of ``tower`` in text order, chunk by chunk (records ``tower.chunks``)."""
        import torch

        tower.tokens.add(tower.texts)
        out = torch.zeros(len(tower.texts), embedding_dim(stepper.model), device=device)
        for rows in micro_batches([tower.tokens.length(t) for t in tower.texts], self.chunk_tokens):
            tower.chunks.append((rows, rng_state(device)))
            with stepper.autocast():
                out[torch.tensor(rows, device=device)] = _embed(stepper, tower, rows)
        return out


def make_grad_cache(cfg: TrainConfig, device_type: str, sharded: bool = False,
                    max_plain_tokens: int | None = None) -> GradCache | None:
    """The :class:`GradCache` ``cfg.cached`` asks for on ``device_type`` (None: plain steps): always, never, or
    unset: auto (steps of more than ``max_plain_tokens`` tokens, the plain step's capacity on the device) except on
    CPU, where memory is rarely the limit and time is.

    ``sharded`` (FSDP, :mod:`embedforge.stages.train.fsdp`): every step is cached, whatever ``cfg.cached``: the ranks must
    make the same collectives each step, which the cached step guarantees even for a rank without rows (an auto
    choice per rank, or the plain step's empty-rank shortcut, would not)."""
    if sharded:  # the capacity counts unsharded weights: the fixed default chunk here
        return GradCache(cfg.resolved_cache_chunk_tokens(device_type))
    if cfg.cached is False or (cfg.cached is None and device_type == "cpu"):
        return None
    auto = cfg.cached is None
    return GradCache(cfg.resolved_cache_chunk_tokens(device_type, max_plain_tokens), auto=auto,
                     max_plain_tokens=max_plain_tokens if auto else None)


def _idle_forward(stepper: Stepper) -> torch.Tensor:
    """A zero with the autograd graph of one forward pass of the model (one empty text): what a rank without rows
    back-propagates under FSDP, so that it all-gathers and reduce-scatters with the others."""
    stepper.document_tokens.add([""])
    features = stepper.document_tokens.features([""], stepper.model.device)
    with stepper.autocast():
        return 0.0 * stepper.model(features)["sentence_embedding"].float().sum()


def _embed(stepper: Stepper, tower: _Tower, rows: list[int]) -> torch.Tensor:
    from embedforge.stages.train.step import embed

    return embed(stepper.model, [tower.texts[i] for i in rows], tower.prompt, stepper.micro_batch_tokens,
                 tower.tokens)

"""The training-time forward (:func:`embed`) and one optimisation step (:class:`Stepper`).

:func:`embed` is token for token what ``model.encode(texts, prompt_name=..., normalize_embeddings=True)`` does
later (``model.preprocess`` with the prompt, forward, L2-normalise), so the saved model reproduces the embeddings
it was trained on. Anchors get the ``query`` prompt, positives and negatives the ``document`` prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from embedforge.contracts import TrainExample
from embedforge.retrieval.encode import embedding_dim
from embedforge.stages.train.batching import Batch, collate
from embedforge.stages.train.distributed import (
    DistContext,
    Shard,
    average_gradients,
    gather,
    shard,
)
from embedforge.stages.train.packing import packer_of
from embedforge.stages.train.tokens import TokenCache, micro_batches

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


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
    (:func:`embedforge.stages.train.tokens.micro_batches`), so short texts are not padded to the longest passage of the
    whole contrastive batch: the same embeddings (attention masks make each row independent of its padding) for far
    fewer FLOPs.

    Args:
        model: The model being trained (on its device).
        texts: Texts to embed (without prompt).
        prompt: Prefix to prepend (the model's ``query``/``document`` prompt); ``""``/``None`` for none.
        max_tokens: Padded tokens per forward pass (texts x longest text of the micro-batch).
        cache: Token rows of the texts under ``prompt`` (:class:`embedforge.stages.train.tokens.TokenCache`); made here
            if not given.
    """
    import torch
    import torch.nn.functional as F

    if not texts:  # e.g. a rank with no rows of a small last batch: (0, dim), still part of the autograd graph
        anchor = next(p for p in model.parameters() if p.requires_grad)
        return torch.zeros(0, embedding_dim(model), device=anchor.device) + 0.0 * anchor.sum()
    cache = cache if cache is not None else TokenCache(model, prompt)
    cache.add(texts)
    groups = micro_batches([cache.length(t) for t in texts], max_tokens)
    packer = packer_of(model) if cache.exact else None  # train.packing: packed rows instead of padded ones
    parts = [(packer.embed(model, cache, [texts[i] for i in g]) if packer is not None else
              model(cache.features([texts[i] for i in g], model.device))["sentence_embedding"]).float() for g in groups]
    order = [i for g in groups for i in g]
    emb = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return F.normalize(emb[inverse.to(emb.device, non_blocking=True)], p=2, dim=1)


class CachedStep(Protocol):
    """A step that embeds and back-propagates a batch in chunks (:class:`embedforge.stages.train.cached.GradCache`)."""

    def applies(self, stepper: Stepper, batch: Batch, local: Batch | None) -> bool: ...

    def backward(self, stepper: Stepper, batch: Batch, local: Batch | None, split: Shard | None) -> torch.Tensor: ...


@dataclass
class Stepper:
    """One optimisation step: forward both towers, loss, backward, clip, optimizer + scheduler step.

    Texts are tokenised once per tower (:class:`embedforge.stages.train.tokens.TokenCache`); :meth:`step` returns the loss
    as a device tensor so the loop does not wait for the GPU every step. Under torchrun (``dist``) each rank embeds
    its share of the batch and the gradients are averaged over the ranks (:mod:`embedforge.stages.train.distributed`),
    or, with ``sharded`` (FSDP2, :mod:`embedforge.stages.train.fsdp`), reduce-scattered by FSDP during backward. With
    ``grad_cache`` (:class:`embedforge.stages.train.cached.GradCache`) a large batch is embedded and back-propagated in chunks.
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
    grad_cache: CachedStep | None = None
    sharded: bool = False
    grade_power: float = 0.0
    query_tokens: TokenCache = field(init=False)
    document_tokens: TokenCache = field(init=False)

    def __post_init__(self) -> None:
        self.query_tokens = TokenCache(self.model, self.query_prompt)
        self.document_tokens = TokenCache(self.model, self.document_prompt)

    def tokenize(self, examples: Sequence[TrainExample]) -> None:
        """Tokenise up front the texts of ``examples`` (anchors: query tower; positives, negatives: document)."""
        self.query_tokens.add(ex.anchor for ex in examples)
        self.document_tokens.add(t for ex in examples for t in (ex.positive, *ex.negatives))

    def autocast(self):
        """The step's autocast context (``amp_dtype`` on ``device_type``; none in fp32)."""
        import torch

        return torch.autocast(self.device_type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    def loss(self, batch: Batch, local: Batch | None = None, split: Shard | None = None) -> torch.Tensor:
        """The loss of ``batch``. Distributed: this rank embeds only ``local`` (its rows of ``split``, see
        :func:`embedforge.stages.train.distributed.shard`) and the embeddings of all ranks are gathered into ``batch``'s
        order."""
        part = local if local is not None else batch
        with self.autocast():
            q = embed(self.model, part.anchors, self.query_prompt, self.micro_batch_tokens, self.query_tokens)
            d = embed(self.model, part.candidates, self.document_prompt, self.micro_batch_tokens, self.document_tokens)
        return self.contrast(batch, q, d, split)

    def contrast(self, batch: Batch, q: torch.Tensor, d: torch.Tensor, split: Shard | None = None) -> torch.Tensor:
        """The loss of ``batch`` from this rank's query embeddings ``q`` and candidate embeddings ``d`` (its
        positives, then its hard negatives): gathered over the ranks, false negatives masked, rows weighted by
        grade (train.grade_power)."""
        b = q.shape[0]
        p, n = d[:b], d[b:]
        if self.dist.enabled:
            q, p, n = (gather(q, self.dist, split.anchors), gather(p, self.dist, split.anchors),
                       gather(n, self.dist, split.negatives))
        mask = batch.mask.to(q.device, non_blocking=True) if batch.mask is not None else None
        weights = batch.weights(self.grade_power)
        return self.loss_fn(q, p, n, mask, weights.to(q.device, non_blocking=True) if weights is not None else None)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` as it is back-propagated: multiplied by the fp16 gradient scaler's scale, if any."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def step_rows(self, examples: Sequence[TrainExample], rows: list[int], known: dict[str, set[str]] | None
                  ) -> torch.Tensor:
        """:meth:`step` on the global batch ``rows`` of ``examples`` (``known``: anchor -> texts never its
        negative); under torchrun this rank embeds its share (:func:`~embedforge.stages.train.distributed.shard`)."""
        if not self.dist.enabled:
            return self.step(collate(examples, rows, known))
        split = shard(rows, self.dist, lambda i: len(examples[i].negatives))
        return self.step(collate(examples, split.order, known), collate(examples, split.mine, None), split)

    def step(self, batch: Batch, local: Batch | None = None, split: Shard | None = None) -> torch.Tensor:
        """:meth:`loss` and backward (or, with ``grad_cache``, the cached forward/backward of
        :mod:`embedforge.stages.train.cached`), gradient averaging over ranks, clipping, optimizer and scheduler step;
        returns the detached loss."""
        import torch

        if self.grad_cache is not None and self.grad_cache.applies(self, batch, local):
            loss = self.grad_cache.backward(self, batch, local, split)
        else:
            loss = self.loss(batch, local, split)
            self.scaled(loss).backward()
        if self.sharded:  # FSDP reduce-scattered (averaged) the gradients during backward; the weights are
            self.model.reshard()  # sharded again on every rank, so each rank's next forward all-gathers once
        else:
            average_gradients(self.model.parameters(), self.dist)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

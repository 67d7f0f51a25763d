"""Contrastive loss used by :mod:`embedforge.stages.train`: InfoNCE over in-batch and hard negatives, with masking of
known false negatives, and its Matryoshka form (the same loss summed over prefixes of the embeddings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.05, symmetric: bool = False, hardness: float = 0.0) -> None:
        """InfoNCE / in-batch-negatives cross-entropy, equivalent to sentence-transformers'
        ``MultipleNegativesRankingLoss(scale=1/temperature)`` (default ``directions=("query_to_doc",)``), plus
        false-negative masking.

        For anchor ``i`` of a batch of ``B`` rows, the candidates are ``[all B positives ; all N hard negatives of
        the batch]`` (every row's negatives, ``N`` = total over rows, so rows may carry different numbers of
        negatives). The logits are cosine similarities divided by ``temperature``; the target is the anchor's own
        positive (column ``i``). Candidates flagged in ``mask`` are removed from the softmax (logit ``-inf``), except
        the diagonal, which is always kept. :func:`false_negative_mask` flags every candidate whose text equals a
        known positive of the anchor (duplicate positives across the batch, or another row's hard negative that
        is this anchor's positive): without the mask such a candidate is pushed away although it is correct.

        With ``symmetric`` the loss also ranks the other way — each positive against the batch's anchors, its own
        anchor the target — and the two cross-entropies are averaged (sentence-transformers'
        ``MultipleNegativesSymmetricRankingLoss``; GTE's bidirectional in-batch loss). The second direction reuses
        the same similarity block (no extra forward), with the mask transposed: a positive is not pushed away from
        an anchor whose known positive it is.

        With ``hardness`` = alpha > 0, every candidate but the anchor's own positive gets ``alpha x cos`` (gradient
        stopped, not divided by the temperature) added to its logit: harder negatives weigh more in the softmax
        (Lan et al. 2025, eq. 5; sentence-transformers' ``hardness_mode="all_negatives"``).

        Args:
            temperature: Softmax temperature (``scale = 1 / temperature``); 0.05 equals sentence-transformers'
                default ``scale=20``. Must be in (0, 1].
            symmetric: Add the document-to-query direction (hard negatives take part in the query-to-document
                direction only).
            hardness: alpha of the hardness weighting; 0 = off.

        Inputs:
            +------------------------------------------------------+--------------------------------------------+
            | Inputs                                               | Shape                                      |
            +======================================================+============================================+
            | ``anchors``: query embeddings                        | ``(B, d)``                                 |
            +------------------------------------------------------+--------------------------------------------+
            | ``positives``: embedding of each anchor's positive   | ``(B, d)``                                 |
            +------------------------------------------------------+--------------------------------------------+
            | ``negatives`` (optional): all hard negatives, flat   | ``(N, d)``, ``N >= 0``                     |
            +------------------------------------------------------+--------------------------------------------+
            | ``mask`` (optional): ``True`` = drop the candidate   | ``(B, B + N)`` bool                        |
            +------------------------------------------------------+--------------------------------------------+

            Embeddings need not be normalised (the loss uses cosine similarity); no labels are needed.

        Example:
            ::

                loss_fn = InfoNCELoss(temperature=0.05)
                mask = false_negative_mask(["p1", "p1"], ["p1", "p1", "n1"])  # duplicate positive across rows
                loss = loss_fn(anchor_emb, positive_emb, negative_emb, mask)

        References:
            - van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding",
              https://arxiv.org/abs/1807.03748
            - Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart Reply",
              https://arxiv.org/abs/1705.00652 (MultipleNegativesRankingLoss)
            - Li et al. 2023, "Towards General Text Embeddings with Multi-stage Contrastive Learning" (GTE),
              https://arxiv.org/abs/2308.03281 (bidirectional in-batch loss)
            - Lan et al. 2025, "LLaVE: Large Language and Vision Embedding Models with Hardness-Weighted Contrastive
              Learning", https://arxiv.org/abs/2503.04812
            - Moreira et al. 2024, "NV-Retriever: Improving text embedding models with effective hard-negative
              mining", https://arxiv.org/abs/2407.15831 (false negatives among hard negatives)
        """
        super().__init__()
        if not 0.0 < temperature <= 1.0:
            raise ValueError(f"temperature must be in (0, 1], got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric
        if hardness < 0:
            raise ValueError(f"hardness must be >= 0, got {hardness}")
        self.hardness = hardness

    @property
    def scale(self) -> float:
        return 1.0 / self.temperature

    def logits(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Masked, temperature-scaled cosine logits ``(B, B + N)`` in float32; column ``i`` is row ``i``'s target."""
        b = anchors.size(0)
        if positives.size(0) != b:
            raise ValueError(f"anchors ({b}) and positives ({positives.size(0)}) must have the same batch size")
        candidates = positives if negatives is None or negatives.numel() == 0 else torch.cat([positives, negatives])
        a = F.normalize(anchors.float(), dim=-1)
        c = F.normalize(candidates.float(), dim=-1)
        cos = a @ c.T
        logits = cos * self.scale
        if self.hardness > 0:  # alpha x stop-grad(cos) on every candidate but the own positive
            penalty = self.hardness * cos.detach()
            penalty[:, :b].fill_diagonal_(0.0)
            logits = logits + penalty
        if mask is not None:
            if mask.shape != logits.shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(logits.shape)}")
            mask = mask.to(device=logits.device, dtype=torch.bool).clone()
            mask[:, :b].fill_diagonal_(False)  # the target is never masked
            logits = logits.masked_fill(mask, float("-inf"))
        return logits

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, mask: Tensor | None = None,
                weights: Tensor | None = None) -> Tensor:
        """The batch's loss: the mean over rows, or with ``weights`` ``(B,)`` the weighted mean (e.g. graded
        judgements: a row of a grade-3 positive counts 3x a grade-1 one at power 1)."""
        logits = self.logits(anchors, positives, negatives, mask)
        b = anchors.size(0)
        labels = torch.arange(b, device=logits.device)
        per_row = F.cross_entropy(logits, labels, reduction="none")
        if self.symmetric:  # row j: positive j against every anchor; masked where it is that anchor's positive
            per_row = (per_row + F.cross_entropy(logits[:, :b].T, labels, reduction="none")) / 2
        if weights is None:
            return per_row.mean()
        weights = weights.to(per_row)
        return (per_row * weights).sum() / weights.sum()

    def get_config_dict(self) -> dict[str, float | bool]:
        return {"temperature": self.temperature, "scale": self.scale, "symmetric": self.symmetric,
                "hardness": self.hardness}


class MatryoshkaLoss(nn.Module):
    def __init__(self, inner: InfoNCELoss, dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
        """Matryoshka representation learning: ``inner``'s loss on every prefix of the embeddings, weighted and
        summed, so that the first ``d`` dimensions of a vector (renormalised) are an embedding of their own.

        For each ``d`` of ``dims`` the anchors, positives and negatives are cut to their first ``d`` columns and
        given to ``inner`` unchanged otherwise (mask, row weights); ``inner`` normalises them (cosine), so each
        prefix is compared at unit length, as it is served (``dimensions``: slice, then renormalise). The result
        is ``sum_d weights[d] x inner(prefix d)``: sentence-transformers' ``MatryoshkaLoss`` around
        ``MultipleNegativesRankingLoss`` (``n_dims_per_step=-1``).

        The loss takes embeddings, not texts, so the cached step (:mod:`embedforge.stages.train.cached`) computes
        it once per dimension on its cached embedding tensors and back-propagates the summed gradient through the
        same chunks: the prefixes cost a few small matrix products, no extra forward.

        Args:
            inner: The contrastive loss of one dimension.
            dims: Prefix lengths, each at most the embedding width.
            weights: One weight per entry of ``dims``; None: all 1.

        References:
            - Kusupati et al. 2022, "Matryoshka Representation Learning", https://arxiv.org/abs/2205.13147
        """
        super().__init__()
        if not dims:
            raise ValueError("MatryoshkaLoss needs at least one dimension")
        weights = list(weights) if weights else [1.0] * len(dims)
        if len(weights) != len(dims):
            raise ValueError(f"{len(weights)} weights for {len(dims)} dimensions")
        self.inner = inner
        self.dims = [int(d) for d in dims]
        self.weights = [float(w) for w in weights]

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, mask: Tensor | None = None,
                weights: Tensor | None = None) -> Tensor:
        """``sum_d w_d x inner(anchors[:, :d], positives[:, :d], negatives[:, :d], mask, weights)``."""
        width = anchors.size(-1)
        if max(self.dims) > width:
            raise ValueError(f"Matryoshka dimension {max(self.dims)} is more than the embeddings' {width}")
        total = anchors.new_zeros((), dtype=torch.float32)
        for d, w in zip(self.dims, self.weights):
            cut = negatives[:, :d] if negatives is not None else None
            total = total + w * self.inner(anchors[:, :d], positives[:, :d], cut, mask, weights)
        return total

    def get_config_dict(self) -> dict[str, object]:
        return {**self.inner.get_config_dict(), "matryoshka_dims": self.dims, "matryoshka_weights": self.weights}


def false_negative_mask(
    positives: Sequence[str],
    candidates: Sequence[str],
    known_positives: Mapping[int, set[str]] | Sequence[set[str]] | None = None,
) -> Tensor:
    """Flag candidates that are in fact positives of the anchor.

    ``mask[i, j]`` is ``True`` when candidate ``j``'s text equals row ``i``'s positive text, or any text in
    ``known_positives[i]`` (e.g. the other positives of the same query elsewhere in the data set), and ``j != i``.

    Args:
        positives: Positive text of each row, length ``B``.
        candidates: Candidate texts in loss order: the ``B`` positives followed by the flat hard negatives.
        known_positives: Optional, per row: further texts that are positives of that row's anchor.

    Returns:
        Bool tensor ``(B, len(candidates))``.
    """
    b = len(positives)
    mask = torch.zeros((b, len(candidates)), dtype=torch.bool)
    where: dict[str, list[int]] = {}
    for j, cand in enumerate(candidates):
        where.setdefault(cand, []).append(j)
    for i, pos in enumerate(positives):
        accept = {pos} | (set(known_positives[i]) if known_positives is not None else set())
        for text in accept:
            for j in where.get(text, ()):
                if j != i:
                    mask[i, j] = True
    return mask

"""Tokenise each training text once; serve padded, token-budgeted micro-batches from the cache.

The training loop forwards every text of a contrastive batch every step. Tokenising them there (as
``model.preprocess`` does when called per batch) costs CPU time each step and, worse, the host-to-device copy of
pageable tensors stalls the CPU until the GPU has drained its queue — so the Python overhead of the next forward
cannot overlap the current one. :class:`TokenCache` tokenises a text the first time it is seen, with exactly
``model.preprocess(texts, prompt=...)`` (same prompt handling, truncation, special tokens), keeps the unpadded
token rows, and later pads a micro-batch itself into pinned memory for an asynchronous copy.

:func:`micro_batches` groups texts by token length under a budget of padded tokens per forward pass: on a GPU a
few large forwards (few kernel launches), on a CPU small ones (little padding).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


class TokenCache:
    """Unpadded token rows of texts under one prompt, as ``model.preprocess(texts, prompt=prompt)`` makes them.

    Args:
        model: The SentenceTransformer whose input module tokenises (its ``max_seq_length`` truncates).
        prompt: Prefix for every text (the model's ``query``/``document`` prompt); ``None`` for none.
        chunk: Texts per ``preprocess`` call while filling the cache.

    Per-token features (2-D tensors such as ``input_ids``, ``attention_mask``, ``token_type_ids``) are stored
    per text; the rest of the ``preprocess`` output (e.g. ``modality``, ``prompt_length``) is the same for every
    text under one prompt and is passed through. Inputs the cache cannot represent (a feature that is neither)
    make :attr:`exact` false, and :meth:`features` then calls ``model.preprocess`` on the micro-batch itself.
    """

    def __init__(self, model: SentenceTransformer, prompt: str | None, chunk: int = 1024) -> None:
        self.model = model
        self.prompt = prompt or None
        self.chunk = chunk
        self.exact = True
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        self._lengths: dict[str, int] = {}
        self._extras: dict[str, Any] | None = None
        tokenizer = getattr(model, "tokenizer", None)
        self._pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self._left = getattr(tokenizer, "padding_side", "right") == "left"

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, texts: Iterable[str]) -> None:
        """Tokenise the texts not yet in the cache (longest first, so each ``preprocess`` call pads little)."""
        todo = sorted({t for t in texts if t not in self._lengths}, key=len, reverse=True)
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            self._store(part, self.model.preprocess(part, prompt=self.prompt))

    def _store(self, texts: list[str], features: dict[str, Any]) -> None:
        import torch

        mask = features.get("attention_mask")
        per_token = {k: v for k, v in features.items() if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == len(texts)}
        extras = {k: v for k, v in features.items() if k not in per_token}
        if not isinstance(mask, torch.Tensor) or "attention_mask" not in per_token or any(
            isinstance(v, torch.Tensor) for v in extras.values()
        ) or (self._extras is not None and extras != self._extras):
            self.exact = False  # a feature we cannot re-pad faithfully: preprocess per micro-batch instead
        self._extras = extras
        if not isinstance(mask, torch.Tensor):
            width = next((v.shape[1] for v in per_token.values()), 1)
            self._lengths.update(dict.fromkeys(texts, width))
            return
        keep = mask.bool().numpy()
        arrays = {k: v.numpy() for k, v in per_token.items()}
        for i, text in enumerate(texts):
            self._lengths[text] = int(keep[i].sum())
            if self.exact:
                self._rows[text] = {k: a[i][keep[i]] for k, a in arrays.items()}

    def length(self, text: str) -> int:
        """Tokens of ``text`` (special tokens and prompt included); tokenises it if needed."""
        if text not in self._lengths:
            self.add([text])
        return self._lengths[text]

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding token id (0 if it has none)."""
        return self._pad_id

    @property
    def extras(self) -> dict[str, Any]:
        """The non-per-token part of the ``preprocess`` output (e.g. ``modality``, ``prompt_length``)."""
        return dict(self._extras or {})

    def row(self, text: str) -> dict[str, np.ndarray]:
        """The unpadded per-token features of ``text`` (needs :attr:`exact`); tokenises it if needed."""
        self.add([text])
        return self._rows[text]

    def features(self, texts: Sequence[str], device: torch.device | str) -> dict[str, Any]:
        """The model inputs for ``texts``: what ``model.preprocess(texts, prompt=...)`` returns, on ``device``.

        Rows are padded to the longest text of the call (on the tokenizer's padding side); on CUDA the tensors are
        built in pinned memory and copied asynchronously.
        """
        import torch
        from sentence_transformers.util import batch_to_device

        self.add(texts)
        if not self.exact:
            return batch_to_device(self.model.preprocess(list(texts), prompt=self.prompt), device)
        rows = [self._rows[t] for t in texts]
        width = max(len(r["attention_mask"]) for r in rows)
        cuda = torch.device(device).type == "cuda"
        out: dict[str, Any] = {}
        for key in rows[0]:
            pad = self._pad_id if key == "input_ids" else 0
            block = np.full((len(rows), width), pad, dtype=rows[0][key].dtype)
            for i, r in enumerate(rows):
                v = r[key]
                if self._left:
                    block[i, width - len(v) :] = v
                else:
                    block[i, : len(v)] = v
            tensor = torch.from_numpy(block)
            out[key] = tensor.pin_memory().to(device, non_blocking=True) if cuda else tensor.to(device)
        out.update(self._extras or {})
        return out


def micro_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group items by length so that each group's padded size (items x longest) stays within ``max_tokens``.

    Items are taken shortest first; a group always holds at least one item (an item longer than the budget forms
    its own group). Returns lists of indices into ``lengths``; every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups

"""Layer-wise learning-rate decay (LLRD): lower transformer layers take smaller steps than the top ones.

With ``train.layer_decay`` = d < 1, a parameter at depth k of an encoder with L layers trains at
``learning_rate x d^(L - k)``: the embeddings are depth 0 (d^L), layer i (0-based) is depth i + 1, so the last
layer and everything above the layer stack (final norm, pooler, projection heads; depth L) take the full learning
rate. The lower layers hold the general-purpose features a small train set should not overwrite, the top layers
adapt most (Howard & Ruder 2018; Clark et al. 2020, ELECTRA). The layer stack is found by shape, not by name: the
``torch.nn.ModuleList`` holding the most parameters (``encoder.layer`` in BERT, ``layers`` in Llama; not a
mixture-of-experts layer's longer list of experts, which sits inside it), so it works for any architecture whose
blocks sit in one list; a model without one trains at one learning rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def layer_depths(model: torch.nn.Module) -> dict[str, int]:
    """Parameter name -> depth (see the module docstring) for every trainable parameter of ``model``."""
    import torch

    stacks = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList)]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not stacks:
        return dict.fromkeys(names, 0)
    stack, blocks = max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    prefix = f"{stack}." if stack else ""
    top = len(blocks)
    depths: dict[str, int] = {}
    seen_stack = False
    for name in names:  # named_parameters follows registration order: embeddings, the stack, then what is above
        if name.startswith(prefix):
            seen_stack = True
            depths[name] = int(name[len(prefix):].split(".", 1)[0]) + 1
        else:
            depths[name] = top if seen_stack else 0
    return depths


def param_groups(model: torch.nn.Module, learning_rate: float, weight_decay: float, decay: float) -> list[dict]:
    """AdamW parameter groups: one per (depth, decayed or not), each at ``learning_rate x decay^(L - depth)``. With
    ``decay`` 1 only the two weight-decay groups (fused AdamW launches its kernels per group).

    Weight decay applies to weight matrices only (biases and norm weights are not decayed)."""
    depths = layer_depths(model) if decay < 1 else {}
    top = max(depths.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth, decayed = depths.get(name, top), p.ndim >= 2
        group = groups.setdefault((depth, decayed), {"params": [], "weight_decay": weight_decay if decayed else 0.0,
                                                     "lr": learning_rate * decay ** (top - depth)})
        group["params"].append(p)
    return list(groups.values())

"""How many tokens a plain (uncached) training step can hold on the device: the rule behind ``train.cached`` unset.

A plain contrastive step keeps the activations of every text of the batch until its backward, so its memory is
(weights + gradients + optimizer states) + tokens x (activation bytes per token). The cached step
(:mod:`embedforge.stages.train.cached`) bounds the second term by one chunk but costs an extra forward, so it should be
taken only when the plain step would not fit. Counting tokens against a fixed multiple of the chunk size would
take the cached step even for a small encoder at a moderate batch on a large GPU, where the plain step fits with
room to spare and is faster; this module estimates memory from the model instead.

Activation bytes per token and layer, 16-bit autocast, attention through SDPA/flash (no sequence-squared term),
after Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", Section 4) with the
MLP width taken from the model rather than assumed 4h:

* the 16-bit inputs of the projections: autocast casts the fp32 residual stream once per projection that reads it
  (Q, K and V separately, the output projection, the MLP's first projection: 10h; gated MLPs read it twice: 12h);
* two norms keeping fp32 tensors: 8h (LayerNorm: its input), 16h (RMSNorm: its input and the normalised input);
  two dropout masks where the model has hidden dropout (BERT): 4h;
* MLP: GELU 4i (its input, the second projection's input); gated MLPs (SwiGLU: Llama, Qwen, Mistral) keep gate, up,
  activation and product: 8i;
* the attention kernel's own: head-split Q/K/V 6h and its output 2h.

``tests/train/test_train_memory.py`` checks all but the attention kernel's part against the tensors autograd keeps for a
real forward (CPU runs attention through another kernel).

With gradient checkpointing a layer keeps only its input (the fp32 residual stream: 4h) until the backward recomputes
it. A safety factor covers what the count leaves out (the allocator's fragmentation, embeddings, pooled outputs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

SAFETY = 1.25  # activation estimate x this: what the count leaves out (fragmentation, embeddings, pooled outputs)
USABLE = 0.85  # of the device's total memory
RESERVE = 2 * 2**30  # CUDA context, kernels' workspaces, the loss's similarity matrices


def _gated_mlp(model: torch.nn.Module) -> bool:
    return any(name.endswith(("gate_proj", "gate_up_proj", ".w1")) for name, _ in model.named_modules())


def _rms_norm(model: torch.nn.Module) -> bool:
    return any("RMSNorm" in type(m).__name__ for m in model.modules())


def _text_config(model: SentenceTransformer):
    """The transformer's config (the text part of a multimodal one)."""
    config = model.transformers_model.config
    return getattr(config, "get_text_config", lambda: config)()


def layer_bytes_per_token(model: SentenceTransformer) -> dict[str, int]:
    """Saved activation bytes per token of one transformer layer, by part (module docstring). ``qkv`` and
    ``attention_out`` are what the attention kernel itself keeps (head-split Q/K/V and its output)."""
    text = _text_config(model)
    h = int(text.hidden_size)
    i = int(getattr(text, "intermediate_size", None) or 4 * h)
    gated = _gated_mlp(model)
    return {
        # autocast casts the fp32 residual stream once per projection that reads it: Q, K, V, the attention's
        # output projection, and the MLP's first projection (gate and up: two)
        "linear_inputs": 2 * h * (4 + (2 if gated else 1)),
        # two norms keeping fp32 tensors: LayerNorm its input, RMSNorm (Llama, Qwen) its input and normalised input
        "norms": 16 * h if _rms_norm(model) else 8 * h,
        "dropout": 4 * h if float(getattr(text, "hidden_dropout_prob", 0) or 0) > 0 else 0,  # two masks
        "mlp": 8 * i if gated else 4 * i,  # GELU: its input, the down projection's input; SwiGLU: gate, up, act, product
        "qkv": 6 * h,
        "attention_out": 2 * h,
    }


def activation_bytes_per_token(model: SentenceTransformer, checkpointing: bool) -> int:
    """Bytes of saved activations per token of a plain training step (16-bit autocast; module docstring)."""
    text = _text_config(model)
    layers = int(text.num_hidden_layers)
    if checkpointing:
        return 4 * int(text.hidden_size) * layers
    return sum(layer_bytes_per_token(model).values()) * layers


def static_bytes(model: torch.nn.Module) -> int:
    """Weights, plus gradients and the two AdamW states of the trainable ones (each in the parameter's dtype)."""
    total = 0
    for p in model.parameters():
        size = p.numel() * p.element_size()
        total += size * (4 if p.requires_grad else 1)
    return total


def plain_step_tokens(model: SentenceTransformer, checkpointing: bool, device_bytes: int) -> int:
    """The most tokens (real, not padded: steps are length-sorted micro-batches or packed rows) a plain step may
    hold on a device of ``device_bytes``; 0 when even the weights and optimizer states leave no room."""
    free = USABLE * device_bytes - static_bytes(model) - RESERVE
    return max(0, int(free / (SAFETY * activation_bytes_per_token(model, checkpointing))))


def device_bytes(device: torch.device) -> int | None:
    """Memory of a CUDA device this process can have: what is free now plus what it already holds (its weights),
    so other processes on a shared card are left their share; None off CUDA (no reliable figure: the fixed token
    rule applies)."""
    import torch

    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(min(total, free + torch.cuda.memory_reserved(device)))

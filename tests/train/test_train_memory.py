"""The plain step's memory estimate (embedforge.stages.train.memory) against the tensors a real forward saves for its
backward, and the cached-step rule built on it (``train.cached`` unset)."""

from __future__ import annotations

import pytest
import torch

from embedforge.config import ModelConfig, PromptsConfig, TrainConfig
from embedforge.retrieval import loading as models
from embedforge.stages.train import memory
from embedforge.stages.train.cached import GradCache, make_grad_cache
from embedforge.stages.train.setup import load_for_training

GIB = 2**30


@pytest.fixture(scope="module")
def minilm(base_model):
    return load_for_training(base_model, TrainConfig(max_seq_length=128, device="cpu"), PromptsConfig())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_decoder import make_decoder

    folder = make_decoder(tmp_path_factory.mktemp("llama") / "m", "llama", hidden=64, layers=4)
    return models.load(str(folder), ModelConfig(pooling="lasttoken"))


def _saved_per_token(model, texts: list[str]) -> float:
    """Bytes per real token of the activations a bf16-autocast training forward saves for backward, excluding the
    attention core (head-split tensors and the score matrix: CPU runs attention in fp32 through the math kernel,
    where CUDA's flash kernel keeps the head-split Q/K/V only) and the bf16 copies of the weights."""
    config = model.transformers_model.config
    widths = {config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if t.dim() and t.shape[-1] in widths and tuple(t.shape) not in shapes and storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    feats = model.preprocess(texts)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(feats)
    layers = config.num_hidden_layers
    return sum(saved.values()) / int(feats["attention_mask"].sum()) / layers


@pytest.mark.parametrize("which", ["minilm", "tiny_llama"])
def test_estimate_matches_what_a_real_forward_saves(which, request):
    """Per layer and token, the estimate without the attention core is within 15 % of what autograd keeps: BERT's
    GELU MLP on MiniLM, Llama's gated (SwiGLU) MLP on a random Llama."""
    model = request.getfixturevalue(which)
    texts = ["the quick brown fox jumps over the lazy dog and runs far away " * 6] * 6
    measured = _saved_per_token(model, texts)
    parts = memory.layer_bytes_per_token(model)
    estimate = sum(parts.values()) - parts["qkv"] - parts["attention_out"]
    assert 0.85 < measured / estimate < 1.15, (which, measured, parts)


def test_capacity_follows_model_size_memory_checkpointing_and_lora(minilm, tiny_llama):
    h200 = 141 * GIB
    plain = memory.plain_step_tokens(minilm, False, h200)
    assert plain > 10 * memory.plain_step_tokens(minilm, False, 16 * GIB) > 0
    assert memory.plain_step_tokens(minilm, True, h200) > 5 * plain  # only the layer inputs are kept
    # a model bigger than the device leaves no room: every step is cached
    assert memory.plain_step_tokens(minilm, False, memory.static_bytes(minilm) // 2) == 0
    # frozen weights (LoRA) carry no gradient or optimizer state
    frozen = memory.static_bytes(minilm)
    for p in minilm.parameters():
        p.requires_grad_(False)
    try:
        assert memory.static_bytes(minilm) * 4 == frozen
    finally:
        for p in minilm.parameters():
            p.requires_grad_(True)
    assert memory._gated_mlp(tiny_llama) and not memory._gated_mlp(minilm)
    assert memory._rms_norm(tiny_llama) and not memory._rms_norm(minilm)


def test_auto_cached_step_is_taken_only_beyond_the_plain_steps_capacity(minilm, mined_dir):
    from embedforge import contracts
    from embedforge.contracts.positives import positives_by_anchor
    from embedforge.stages.train.batching import collate
    from embedforge.stages.train.losses import InfoNCELoss
    from embedforge.stages.train.step import Stepper

    rows = contracts.read_train_examples(mined_dir)[:8]
    batch = collate(rows, list(range(len(rows))), positives_by_anchor(rows))
    stepper = Stepper(minilm, InfoNCELoss(0.05), None, None, None, None, 1.0, micro_batch_tokens=256)
    cache = make_grad_cache(TrainConfig(), "cuda", max_plain_tokens=10**9)
    assert cache.auto and not cache.applies(stepper, batch)
    assert GradCache(16384, auto=True, max_plain_tokens=50).applies(stepper, batch)
    assert GradCache(16384, auto=False, max_plain_tokens=10**9).applies(stepper, batch)  # cached=true: always
    assert make_grad_cache(TrainConfig(cached=True), "cuda", max_plain_tokens=50).max_plain_tokens is None


def test_a_cached_steps_chunk_is_as_large_as_a_plain_step_can_be():
    """One chunk's activations are alive at a time, so on CUDA the chunk defaults to the plain step's capacity
    (larger chunks were faster on the H200: docs/benchmarks.md); a set size, CPU, FSDP and a capacity too small to
    trust keep their own."""
    assert make_grad_cache(TrainConfig(), "cuda", max_plain_tokens=50_000) == GradCache(50_000, True, 50_000)
    assert make_grad_cache(TrainConfig(cached=True), "cuda", max_plain_tokens=50_000).chunk_tokens == 50_000
    assert make_grad_cache(TrainConfig(cache_chunk_tokens=2048), "cuda", max_plain_tokens=50_000).chunk_tokens == 2048
    assert make_grad_cache(TrainConfig(), "cuda", max_plain_tokens=500).chunk_tokens == 16384
    assert make_grad_cache(TrainConfig(), "cuda").chunk_tokens == 16384  # capacity unknown
    assert make_grad_cache(TrainConfig(cached=True), "cpu", max_plain_tokens=50_000).chunk_tokens == 4096
    assert make_grad_cache(TrainConfig(), "cuda", sharded=True, max_plain_tokens=50_000).chunk_tokens == 16384

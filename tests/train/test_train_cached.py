"""Cached contrastive batches (embedforge.stages.train.cached) and gradient checkpointing: the same loss and parameter
gradients as the plain step, on the real MiniLM with dropout on and a false-negative mask; the 2-process (Gloo)
version of the cached step is checked in tests/train/test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts.positives import positives_by_anchor
from embedforge.stages.train.batching import Batch, collate
from embedforge.stages.train.cached import GradCache, make_grad_cache
from embedforge.stages.train.losses import InfoNCELoss
from embedforge.stages.train.setup import apply_memory_options, load_for_training
from embedforge.stages.train.step import Stepper

#: Gradients summed over every token of a batch (position and token-type embeddings) differ by a few 1e-6 between
#: the chunked and the whole-batch order on CPUs whose kernels accumulate in another order (AVX-512); a wrong
#: gradient is off by the size of the gradient itself.
GRAD_ATOL = 1e-5
MICRO = 256  # padded tokens per forward: the batch below takes several forwards per tower


@pytest.fixture(scope="module")
def batch(mined_dir) -> Batch:
    """9 real mined rows; the last repeats the first row's positive under another anchor, so the mask flags it."""
    rows = contracts.read_train_examples(mined_dir)[:8]
    rows.append(rows[0].model_copy(update={"anchor": "a second question about " + rows[0].anchor}))
    known = positives_by_anchor(rows)
    b = collate(rows, list(range(len(rows))), known)
    assert b.mask is not None and b.mask.any()
    return b


@pytest.fixture(scope="module")
def model(base_model):
    return load_for_training(base_model, TrainConfig(max_seq_length=48, device="cpu"),
                             PromptsConfig(query="query: ", document="passage: "))


def _grads(model, batch: Batch, seed: int, grad_cache: GradCache | None = None) -> tuple[float, dict, int]:
    """Loss, parameter gradients and number of forward passes of one backward of ``batch`` from RNG ``seed``."""
    stepper = Stepper(model, InfoNCELoss(0.05), None, None, "query: ", "passage: ", 1.0, micro_batch_tokens=MICRO)
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    try:
        if grad_cache is None:
            loss = stepper.loss(batch)
            loss.backward()
        else:
            loss = grad_cache.backward(stepper, batch)
    finally:
        hook.remove()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(want) > 50
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=GRAD_ATOL, msg=lambda m, name=name: f"{name}: {m}")


def test_cached_step_has_the_plain_steps_gradients_with_dropout(model, batch):
    model.train()  # dropout on: the cached step must replay each chunk's masks
    loss, want, plain_forwards = _grads(model, batch, seed=5)
    _, other_seed, _ = _grads(model, batch, seed=6)
    query = next(n for n in want if n.endswith("layer.0.attention.self.query.weight"))
    assert not torch.allclose(other_seed[query], want[query])  # dropout matters
    # chunks of the micro-batch budget are exactly the plain step's forwards: the same dropout masks
    got_loss, got, cached_forwards = _grads(model, batch, seed=5, grad_cache=GradCache(chunk_tokens=MICRO))
    assert plain_forwards >= 4 and cached_forwards == 2 * plain_forwards  # no-grad pass + re-forward, per chunk
    assert got_loss == pytest.approx(loss, abs=1e-6)
    _assert_same(got, want)


def test_cached_step_with_other_chunks_has_the_plain_steps_gradients_without_dropout(model, batch):
    model.eval()
    loss, want, _ = _grads(model, batch, seed=0)
    got_loss, got, forwards = _grads(model, batch, seed=0, grad_cache=GradCache(chunk_tokens=100))
    assert forwards > 20  # one or two texts per chunk
    assert got_loss == pytest.approx(loss, abs=1e-6)
    _assert_same(got, want)


def test_gradient_checkpointing_keeps_the_gradients(base_model, model, batch):
    model.train()
    _, want, _ = _grads(model, batch, seed=3)
    cfg = TrainConfig(max_seq_length=48, device="cpu", gradient_checkpointing=True)
    ckpt = load_for_training(base_model, cfg, PromptsConfig(query="query: ", document="passage: "))
    apply_memory_options(ckpt, cfg)
    assert ckpt.transformers_model.is_activation_checkpointing
    ckpt.train()
    _, got, _ = _grads(ckpt, batch, seed=3)
    _assert_same(got, want)


def test_cached_config_defaults():
    assert make_grad_cache(TrainConfig(), "cpu") is None  # CPU: plain steps unless asked
    auto = make_grad_cache(TrainConfig(), "cuda")
    assert auto == GradCache(chunk_tokens=16384, auto=True)
    assert make_grad_cache(TrainConfig(cached=True, cache_chunk_tokens=512), "cpu") == GradCache(512, auto=False)
    assert make_grad_cache(TrainConfig(cached=False), "cuda") is None
    assert make_grad_cache(TrainConfig(cached=False), "cpu", sharded=True) == GradCache(4096, auto=False)  # FSDP


def test_bf16_weights_train(base_model, batch):
    """weights_dtype=bf16: weights, gradients and AdamW states in bf16 (no fp32 master copy); the loss goes down."""
    from embedforge.stages.train.distributed import DistContext
    from embedforge.stages.train.setup import make_stepper

    cfg = TrainConfig(max_seq_length=48, device="cpu", weights_dtype="bf16", learning_rate=1e-4)
    prompts = PromptsConfig(query="query: ", document="passage: ")
    model = load_for_training(base_model, cfg, prompts)
    apply_memory_options(model, cfg)
    stepper = make_stepper(model, cfg, prompts, steps=4, dist=DistContext())
    model.train()
    losses = [float(stepper.step(batch)) for _ in range(4)]
    assert losses[-1] < losses[0]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {s["exp_avg"].dtype for s in stepper.optimizer.state.values()} == {torch.bfloat16}

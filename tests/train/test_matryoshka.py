"""Matryoshka training (train.matryoshka_dims): the loss is sentence-transformers' MatryoshkaLoss around
MultipleNegativesRankingLoss on the same batch of the real MiniLM, in the plain and the cached step; the cached step
keeps the plain step's gradients; the dimensions are validated against the model and saved with it."""

from __future__ import annotations

import json

import pytest
import torch

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.errors import ConfigError, InputError
from embedforge.retrieval.dimensions import trained_dims
from embedforge.stages.train.batching import Batch, collate
from embedforge.stages.train.cached import GradCache
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.losses import InfoNCELoss, MatryoshkaLoss
from embedforge.stages.train.setup import (
    contrastive_loss,
    load_for_training,
    make_stepper,
)
from embedforge.stages.train.step import Stepper, embed

#: Gradients summed over every token of a batch (position and token-type embeddings) differ by a few 1e-6 between
#: the chunked and the whole-batch order on CPUs whose kernels accumulate in another order (AVX-512); a wrong
#: gradient is off by the size of the gradient itself.
GRAD_ATOL = 1e-5

DIMS = [384, 128, 64]
WEIGHTS = [1.0, 0.5, 2.0]


@pytest.fixture(scope="module")
def rows(mined_dir):
    """6 real mined rows with 2 hard negatives each, distinct positives (no false negatives to mask)."""
    seen, out = set(), []
    for r in contracts.read_train_examples(mined_dir):
        if r.positive not in seen and len(r.negatives) >= 2:
            seen.add(r.positive)
            out.append(r.model_copy(update={"negatives": r.negatives[:2]}))
    return out[:6]


@pytest.fixture(scope="module")
def model(base_model):
    m = load_for_training(base_model, TrainConfig(max_seq_length=48, device="cpu"), PromptsConfig())
    m.eval()  # no dropout: the two implementations see the same embeddings
    return m


def _st_loss(model, rows) -> float:
    """sentence-transformers' MatryoshkaLoss(MultipleNegativesRankingLoss(scale=20)) on (anchor, positive,
    negative_1, negative_2) columns."""
    from sentence_transformers.sentence_transformer.losses import (
        MatryoshkaLoss as STMatryoshka,
    )
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.util import batch_to_device

    loss = STMatryoshka(model, MultipleNegativesRankingLoss(model, scale=20.0), DIMS, WEIGHTS)
    columns = [[r.anchor for r in rows], [r.positive for r in rows], [r.negatives[0] for r in rows],
               [r.negatives[1] for r in rows]]
    features = [batch_to_device(model.preprocess(c), model.device) for c in columns]
    with torch.no_grad():
        return float(loss(features, None))


def _ours(model, batch: Batch, grad_cache: GradCache | None) -> tuple[float, dict]:
    stepper = Stepper(model, MatryoshkaLoss(InfoNCELoss(0.05), DIMS, WEIGHTS), None, None, None, None, 1.0,
                      micro_batch_tokens=256)
    model.zero_grad(set_to_none=True)
    if grad_cache is None:
        loss = stepper.loss(batch)
        loss.backward()
    else:
        loss = grad_cache.backward(stepper, batch)
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_loss_is_sentence_transformers_matryoshka_loss_plain_and_cached(model, rows):
    batch = collate(rows, list(range(len(rows))), None)
    want = _st_loss(model, rows)
    plain, plain_grads = _ours(model, batch, None)
    cached, cached_grads = _ours(model, batch, GradCache(chunk_tokens=100))  # one or two texts per chunk
    assert plain == pytest.approx(want, rel=1e-4)
    assert cached == pytest.approx(want, rel=1e-4)
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > 50
    for name, g in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], g, rtol=1e-4, atol=GRAD_ATOL,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_loss_is_the_weighted_sum_of_the_per_dimension_losses(model, rows):
    batch = collate(rows, list(range(len(rows))), None)
    inner = InfoNCELoss(0.05)
    with torch.no_grad():
        a = embed(model, batch.anchors, None)
        d = embed(model, batch.candidates, None)
        b = a.shape[0]
        per_dim = [float(inner(a[:, :k], d[:b, :k], d[b:, :k])) for k in DIMS]
        total = float(MatryoshkaLoss(inner, DIMS, WEIGHTS)(a, d[:b], d[b:]))
    assert total == pytest.approx(sum(w * x for w, x in zip(WEIGHTS, per_dim)), rel=1e-6)
    assert per_dim[0] != pytest.approx(per_dim[2], rel=1e-3)  # the prefixes are scored on their own


def test_dims_are_checked_against_the_model(model):
    assert isinstance(contrastive_loss(model, TrainConfig()), InfoNCELoss)
    assert isinstance(contrastive_loss(model, TrainConfig(matryoshka_dims=DIMS)), MatryoshkaLoss)
    with pytest.raises(InputError) as err:
        contrastive_loss(model, TrainConfig(matryoshka_dims=[512, 128]))
    assert "train.matryoshka_dims" in str(err.value) and "384" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, field", [
    ("train.matryoshka_dims=[128, 384]", "train.matryoshka_dims"),
    ("train.matryoshka_dims=[384, 384]", "train.matryoshka_dims"),
    ("train.matryoshka_dims=[384, 0]", "train.matryoshka_dims"),
    ("train.matryoshka_weights=[1.0]", "train.matryoshka_weights"),
])
def test_bad_dims_fail_at_load_naming_the_field(override, field):
    from embedforge.config.loading import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.matryoshka_dims=[384, 128]", override])
    assert field in str(err.value) and "\n" not in str(err.value)


def test_training_with_dims_saves_them_with_the_model(tmp_path, base_model, rows):
    from embedforge.stages import train

    mined = tmp_path / "mined"
    contracts.write_jsonl(mined / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    cfg = TrainConfig(epochs=1, batch_size=3, max_seq_length=32, device="cpu", matryoshka_dims=DIMS)
    manifest = train.run(mined, tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    assert trained_dims(tmp_path / "model") == DIMS
    st_config = json.loads((tmp_path / "model" / "config_sentence_transformers.json").read_text())
    assert st_config["matryoshka_dims"] == DIMS and "prompts" in st_config  # beside sentence-transformers' keys
    assert manifest.result.final_loss > 0
    stepper = make_stepper(load_for_training(base_model, cfg, PromptsConfig()), cfg, PromptsConfig(), 1, DistContext())
    assert stepper.loss_fn.dims == DIMS and stepper.loss_fn.weights == [1.0, 1.0, 1.0]

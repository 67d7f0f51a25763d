"""Train stage: the loss on hand-built tensors, the no-duplicates sampler, and real training of the real base model
on a small slice of the mined tiny-corpus rows (short sequences so it stays fast on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts import AppliedPolicy, MinedPolicy, TrainExample
from embedforge.errors import InputError
from embedforge.stages import train
from embedforge.stages.train.batching import collate, no_duplicate_batches, plan_steps
from embedforge.stages.train.losses import InfoNCELoss, false_negative_mask
from embedforge.stages.train.setup import compile_encoder, load_for_training
from embedforge.stages.train.step import Stepper, embed
from embedforge.stages.train.wise_ft import resolve_base_weight

PROMPTS = PromptsConfig(query="query: ", document="passage: ")
SMALL = {"epochs": 1, "batch_size": 4, "max_seq_length": 32, "learning_rate": 2e-4, "warmup_ratio": 0.0, "seed": 7, "device": "cpu"}


# ------------------------------------------------------------------------------------------------ loss
def _hand_loss(a: torch.Tensor, c: torch.Tensor, t: float, drop: set[tuple[int, int]] = frozenset()) -> torch.Tensor:
    """-log softmax of the diagonal over cosine/t, computed term by term; ``drop`` = (row, column) left out."""
    a, c = F.normalize(a, dim=-1), F.normalize(c, dim=-1)
    total = 0.0
    for i in range(a.size(0)):
        terms = [torch.exp(a[i] @ c[j] / t) for j in range(c.size(0)) if (i, j) not in drop]
        total = total - torch.log(torch.exp(a[i] @ c[i] / t) / sum(terms))
    return total / a.size(0)


def test_loss_equals_cross_entropy_by_hand():
    g = torch.Generator().manual_seed(0)
    a, p, n = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)
    loss = InfoNCELoss(temperature=0.1)(a, p, n)
    torch.testing.assert_close(loss, _hand_loss(a, torch.cat([p, n]), 0.1))
    # without hard negatives: in-batch negatives only
    torch.testing.assert_close(InfoNCELoss(0.1)(a, p), _hand_loss(a, p, 0.1))


def test_loss_equals_sentence_transformers_mnrl():
    """Same value as MultipleNegativesRankingLoss(scale=1/temperature) with its column layout of negatives."""
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )

    g = torch.Generator().manual_seed(1)
    a, p = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    n1, n2 = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    mnrl = MultipleNegativesRankingLoss(model=None, scale=20.0)  # the model is only used to embed; we pass embeddings
    expected = mnrl.compute_loss_from_embeddings([a, p, n1, n2], labels=None)
    # ours takes each row's negatives together (row-major); the softmax does not care about column order
    flat = torch.stack([n1, n2], dim=1).reshape(-1, 16)
    torch.testing.assert_close(InfoNCELoss(temperature=0.05)(a, p, flat), expected)


def test_duplicate_positive_is_masked_except_on_the_diagonal():
    g = torch.Generator().manual_seed(2)
    a, p, n = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(2, 8, generator=g)
    positives = ["same passage", "same passage", "other passage"]
    negatives = ["a negative", "same passage"]  # row 2's hard negative is rows 0/1's positive
    mask = false_negative_mask(positives, positives + negatives)
    assert mask.tolist() == [
        [False, True, False, False, True],
        [True, False, False, False, True],
        [False, False, False, False, False],
    ]
    loss_fn = InfoNCELoss(temperature=0.05)
    got = loss_fn(a, p, n, mask)
    torch.testing.assert_close(got, _hand_loss(a, torch.cat([p, n]), 0.05, drop={(0, 1), (0, 4), (1, 0), (1, 4)}))
    assert got < loss_fn(a, p, n)  # the false negatives were pushing the loss up
    # a mask that (wrongly) flags the target itself is overridden: the diagonal always stays
    full = torch.ones(3, 5, dtype=torch.bool)
    expected_diag_only = _hand_loss(a, torch.cat([p, n]), 0.05, drop={(i, j) for i in range(3) for j in range(5) if i != j})
    torch.testing.assert_close(loss_fn(a, p, n, full), expected_diag_only)  # == 0: only the target remains
    assert float(loss_fn(a, p, n, full)) == pytest.approx(0.0, abs=1e-6)


def test_known_positives_of_the_anchor_are_masked_too():
    mask = false_negative_mask(["p0", "p1"], ["p0", "p1", "p0-other", "n"], known_positives=[{"p0-other"}, set()])
    assert mask.tolist() == [[False, False, True, False], [False, False, False, False]]


def test_symmetric_loss_averages_both_directions_with_the_mask_transposed():
    """symmetric=True: the mean of query->document (positives + hard negatives) and document->query (each positive
    against the anchors); a duplicate positive masked for anchor i is masked for positive i's row the other way."""
    g = torch.Generator().manual_seed(3)
    a, p, n = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    loss = InfoNCELoss(temperature=0.1, symmetric=True)
    torch.testing.assert_close(loss(a, p, n), (_hand_loss(a, torch.cat([p, n]), 0.1) + _hand_loss(p, a, 0.1)) / 2)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 2] = True  # positive 2 is a known positive of anchor 0
    expected = (_hand_loss(a, torch.cat([p, n]), 0.1, drop={(0, 2)}) + _hand_loss(p, a, 0.1, drop={(2, 0)})) / 2
    torch.testing.assert_close(loss(a, p, n, mask), expected)


def test_hardness_adds_alpha_times_the_cosine_to_every_negative_logit():
    """hardness=alpha: logit(i, j) = cos/t + alpha x cos for every candidate j but the own positive (Lan et al.)."""
    g = torch.Generator().manual_seed(4)
    a, p, n = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    c = torch.cat([p, n])
    an, cn = F.normalize(a, dim=-1), F.normalize(c, dim=-1)
    cos = an @ cn.T
    logits = cos / 0.05 + 2.0 * cos * (1 - torch.eye(3, 7))
    expected = F.cross_entropy(logits, torch.arange(3))
    got = InfoNCELoss(temperature=0.05, hardness=2.0)(a, p, n)
    torch.testing.assert_close(got, expected)
    assert not torch.isclose(got, InfoNCELoss(temperature=0.05)(a, p, n))
    # the penalty carries no gradient: d loss / d negatives equals that of the plain loss with the weighted softmax
    n1 = n.clone().requires_grad_(True)
    InfoNCELoss(temperature=0.05, hardness=2.0)(a, p, n1).backward()
    n2 = n.clone().requires_grad_(True)
    cand = torch.cat([p, n2])
    shifted = (an @ F.normalize(cand, dim=-1).T) / 0.05 + (2.0 * cos * (1 - torch.eye(3, 7))).detach()
    F.cross_entropy(shifted, torch.arange(3)).backward()
    torch.testing.assert_close(n1.grad, n2.grad)
    with pytest.raises(ValueError):
        InfoNCELoss(hardness=-1.0)


def test_loss_rejects_bad_shapes_and_temperature():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="same batch size"):
        InfoNCELoss()(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="mask has shape"):
        InfoNCELoss()(torch.randn(2, 4), torch.randn(2, 4), torch.randn(1, 4), torch.zeros(2, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ batching
def _examples() -> list[TrainExample]:
    rows = [TrainExample(anchor=f"q{i}", positive=f"p{i}", negatives=[f"n{i}"] * (i % 3)) for i in range(20)]
    rows += [TrainExample(anchor="q0", positive="p0-bis"), TrainExample(anchor="q-dup", positive="p1")]
    return rows


def test_no_duplicate_batches_cover_every_row_once_without_duplicates():
    ex = _examples()
    batches = no_duplicate_batches(ex, batch_size=8, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(ex)))
    for b in batches:
        texts = [t for i in b for t in (ex[i].anchor, ex[i].positive)]
        assert len(texts) == len(set(texts))
    assert batches == no_duplicate_batches(ex, batch_size=8, seed=3)
    assert batches != no_duplicate_batches(ex, batch_size=8, seed=4)


def test_plan_supports_fractional_epochs():
    ex = _examples()
    per_epoch = len(no_duplicate_batches(ex, batch_size=4, seed=0))
    assert len(plan_steps(ex, 4, 1.5, seed=0)) == round(1.5 * per_epoch)
    assert len(plan_steps(ex, 4, 0.01, seed=0)) == 1


def test_collate_flattens_variable_negatives_and_builds_the_mask():
    ex = _examples()
    known = {"q0": {"p0", "p0-bis"}}
    texts_only = collate(ex, [0, 1, 2, 20], None)  # one rank's share of a distributed batch: no mask
    assert texts_only.mask is None and texts_only.candidates == ["p0", "p1", "p2", "p0-bis", "n1", "n2", "n2"]
    b = collate(ex, [0, 1, 2, 20], known)  # rows with 0, 1, 2, 0 negatives; rows 0 and 20 share anchor q0
    assert b.candidates == ["p0", "p1", "p2", "p0-bis", "n1", "n2", "n2"]
    assert b.mask.tolist() == [
        [False, False, False, True, False, False, False],  # q0's other positive is not its negative
        [False] * 7,
        [False] * 7,
        [True, False, False, False, False, False, False],
    ]


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def small_mined(tmp_path_factory, mined_dir) -> Path:
    """8 real mined rows with at most 2 negatives each."""
    rows = contracts.read_train_examples(mined_dir)[:8]
    rows = [r.model_copy(update={"negatives": r.negatives[:2]}) for r in rows]
    out = tmp_path_factory.mktemp("small_mined")
    contracts.write_jsonl(out / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_mined, base_model) -> Path:
    out = tmp_path_factory.mktemp("trained") / "model"
    train.run(small_mined, out, TrainConfig(**SMALL), base_model=base_model, prompts=PROMPTS)
    return out


def _eval_loss(model, examples: list[TrainExample], temperature: float) -> float:
    """Mean loss over fixed batches, eval mode (no dropout): comparable before and after training."""
    stepper = Stepper(model, InfoNCELoss(temperature), None, None, PROMPTS.query, PROMPTS.document, 1.0)
    model.eval()
    known = {e.anchor: {e.positive} for e in examples}
    with torch.no_grad():
        losses = [float(stepper.loss(collate(examples, list(range(s, s + 4)), known))) for s in range(0, len(examples), 4)]
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_and_writes_a_manifest(trained, small_mined, base_model):
    from sentence_transformers import SentenceTransformer

    examples = contracts.read_train_examples(small_mined)
    cfg = TrainConfig(**SMALL)
    before = _eval_loss(load_for_training(base_model, cfg, PROMPTS), examples, cfg.temperature)
    after = _eval_loss(SentenceTransformer(str(trained), device="cpu"), examples, cfg.temperature)
    assert after < before - 0.05, (before, after)

    m = contracts.read_manifest(trained)
    assert m.stage == "train"
    assert m.counts == {"examples": 8, "augment_rows": 0, "steps": 2, "epochs": 1, "runs": 1}
    r = m.result
    assert r.device == "cpu" and r.precision == "fp32"
    assert r.examples_per_second > 0 and r.final_loss == r.loss_history[-1].loss
    assert [h.step for h in r.loss_history] == [1, 2]


def test_saved_model_reproduces_the_training_time_forward(trained):
    from sentence_transformers import SentenceTransformer

    cfg_file = json.loads((trained / "config_sentence_transformers.json").read_text())
    assert cfg_file["prompts"] == {"query": "query: ", "document": "passage: "}
    model = SentenceTransformer(str(trained), device="cpu")
    assert model.max_seq_length == 32
    texts = ["How does the assert statement behave under -O?", "A much longer text " * 20]
    model.eval()
    for name in ("query", "document"):
        encoded = model.encode(texts, prompt_name=name, normalize_embeddings=True, convert_to_tensor=True)
        with torch.no_grad():
            forward = embed(model, texts, model.prompts[name])
        torch.testing.assert_close(encoded, forward, atol=1e-5, rtol=0)
    # and the prompt matters: the two towers differ
    assert not torch.allclose(
        model.encode(texts[:1], prompt_name="query", convert_to_tensor=True),
        model.encode(texts[:1], prompt_name="document", convert_to_tensor=True),
    )


def test_component_run_reproduces_the_library_run_weights(tmp_path, trained, small_mined, base_model):
    """Same seed, same data -> bit-identical weights (here through the KFP component)."""
    from embedforge.components.train.component import train as train_component
    from kfp import dsl
    from safetensors.torch import load_file

    model = dsl.Model(uri=str(tmp_path / "model"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    train_component.python_func(
        mined=dsl.Dataset(uri=str(small_mined)),
        base_model=base_model,
        config=TrainConfig(**SMALL).model_dump(),
        prompts=PROMPTS.model_dump(),
        model=model,
        metrics=metrics,
    )
    a, b = load_file(str(trained / "model.safetensors")), load_file(str(Path(model.path) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(str(Path(base_model) / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in a)  # and training did change the weights
    assert metrics.metadata["steps"] == 2 and metrics.metadata["final_loss"] > 0


def test_wise_ft_saves_the_interpolation_of_finetuned_and_base_weights(tmp_path, trained, small_mined, base_model):
    """base_weight=w: the saved weights are exactly (1 - w) x the plain fine-tuned run + w x the base model."""
    from safetensors.torch import load_file

    m = train.run(small_mined, tmp_path / "wise", TrainConfig(**SMALL, base_weight=0.25), base_model=base_model,
                  prompts=PROMPTS)
    assert m.result.base_weight == 0.25
    ft, base = load_file(str(trained / "model.safetensors")), load_file(str(Path(base_model) / "model.safetensors"))
    wise = load_file(str(tmp_path / "wise" / "model.safetensors"))
    for k in wise:
        torch.testing.assert_close(wise[k], 0.75 * ft[k] + 0.25 * base[k], rtol=1e-5, atol=1e-6)


def test_soup_saves_the_average_of_runs_with_seeds_1000_apart(tmp_path, trained, small_mined, base_model):
    """soup=2: the saved weights are the mean of the seed-7 run (``trained``) and a plain run with seed 1007."""
    from safetensors.torch import load_file

    other = tmp_path / "seed1007"
    train.run(small_mined, other, TrainConfig(**{**SMALL, "seed": 1007}), base_model=base_model, prompts=PROMPTS)
    m = train.run(small_mined, tmp_path / "soup", TrainConfig(**SMALL, soup=2), base_model=base_model, prompts=PROMPTS)
    assert m.counts["runs"] == 2 and m.counts["steps"] == 2
    a, b = load_file(str(trained / "model.safetensors")), load_file(str(other / "model.safetensors"))
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the two runs differ (batch order, dropout)
    for k in soup:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2, rtol=1e-5, atol=1e-6)


def test_average_last_saves_the_mean_of_the_tail_steps_weights(tmp_path, trained, small_mined, base_model,
                                                                monkeypatch):
    """average_last=0.99 over a 2-step run: the weights after step 1 and after step 2 are snapshotted (the latter
    equal to the plain run's saved model) and the saved model is their mean."""
    from safetensors.torch import load_file

    from embedforge.stages.train import driver
    from embedforge.stages.train.soup import WeightAverage, tail_steps

    assert tail_steps(2, 0.99) == {1, 2} and tail_steps(2, 0.4) == {2} and tail_steps(45, 0.5) >= {45, 23}
    assert len(tail_steps(1000, 0.5)) == 10 and not tail_steps(10, 0.0)
    seen: list[dict[str, torch.Tensor]] = []

    class Recording(WeightAverage):  # the real average, plus a copy of each snapshot it receives
        def add(self, model) -> None:
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().add(model)

    monkeypatch.setattr(driver, "WeightAverage", Recording)
    train.run(small_mined, tmp_path / "tail", TrainConfig(**SMALL, average_last=0.99), base_model=base_model,
              prompts=PROMPTS)
    saved, last = load_file(str(tmp_path / "tail" / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert len(seen) == 2
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])  # step 2 moved the weights
    for k in saved:
        key = next(n for n in seen[1] if n.endswith(k))
        torch.testing.assert_close(seen[1][key], last[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved[k], (seen[0][key] + seen[1][key]) / 2, rtol=1e-5, atol=1e-6)


def test_grade_power_weighs_graded_rows_and_leaves_ungraded_ones_alone(tmp_path, trained, small_mined, base_model):
    """The same 2-step run: ungraded rows with grade_power 2 save exactly the plain model (all weights 1); with the
    first rows graded 3 the saved weights differ (the weighted loss reached the optimizer)."""
    from safetensors.torch import load_file

    plain = load_file(str(trained / "model.safetensors"))
    train.run(small_mined, tmp_path / "ungraded", TrainConfig(**SMALL, grade_power=2.0), base_model=base_model,
              prompts=PROMPTS)
    same = load_file(str(tmp_path / "ungraded" / "model.safetensors"))
    assert all(torch.equal(same[k], plain[k]) for k in plain)
    rows = contracts.read_train_examples(small_mined)
    graded = tmp_path / "graded_rows"
    contracts.write_jsonl(graded / contracts.TRAIN_FILE,
                          (r.model_copy(update={"grade": 3 if i % 4 == 0 else 1}).to_columns()
                           for i, r in enumerate(rows)))
    train.run(graded, tmp_path / "graded", TrainConfig(**SMALL, grade_power=2.0), base_model=base_model,
              prompts=PROMPTS)
    moved = load_file(str(tmp_path / "graded" / "model.safetensors"))
    assert any(not torch.allclose(moved[k], plain[k]) for k in plain)


def test_base_weight_defaults_to_the_users_pairs_else_the_kind_that_made_most_rows(tmp_path):
    """Unset base_weight: the base weight of the user's (default-kind) pairs when they made any rows — offline rows
    beside them are augmentation (sdg.augment) — else of the kind that made more than half of the rows, as the mine
    manifest records it (offline 0.5, default 0), else 0; set: as set; rows no mine stage wrote: 0."""
    def mined(offline: int, default: int) -> Path:
        d = tmp_path / f"m{offline}-{default}"
        kinds = {"offline": AppliedPolicy(num_negatives=0, consistency_rank=10, base_weight=0.5, examples=offline),
                 "default": AppliedPolicy(num_negatives=4, consistency_rank=0, base_weight=0.0, examples=default)}
        contracts.StageTimer("mine").write_manifest(d, result=contracts.MineResult(
            base_model="m", embedding_dim=8, mean_positive_score=0.7, mean_negative_score=0.3,
            policy=MinedPolicy(kinds=kinds)))
        return d

    assert resolve_base_weight(TrainConfig(), mined(10, 0)) == 0.5  # offline pairs alone: WiSE-FT halfway
    assert resolve_base_weight(TrainConfig(), mined(6, 4)) == 0.0  # most rows offline, but beside the user's
    assert resolve_base_weight(TrainConfig(), mined(5, 5)) == 0.0
    assert resolve_base_weight(TrainConfig(), mined(0, 0)) == 0.0
    assert resolve_base_weight(TrainConfig(base_weight=0.0), mined(10, 0)) == 0.0
    assert resolve_base_weight(TrainConfig(base_weight=0.3), mined(0, 10)) == 0.3
    assert resolve_base_weight(TrainConfig(), tmp_path / "no-manifest") == 0.0


def test_a_mine_manifest_without_a_policy_is_an_input_error(tmp_path):
    """A mine manifest of an older embedforge (schema 1: no typed result, no policy) names itself and what to do."""
    (tmp_path / contracts.MANIFEST).write_text(json.dumps({
        "schema_version": 1, "stage": "mine", "counts": {"examples": 10, "offline_examples": 6}, "started_at": 0,
        "finished_at": 1, "seconds": 1}))
    with pytest.raises(InputError, match=r"manifest.json was written by another embedforge version.*re-run the mine"):
        resolve_base_weight(TrainConfig(), tmp_path)
    assert resolve_base_weight(TrainConfig(base_weight=0.2), tmp_path) == 0.2


def test_max_seq_length_is_capped_by_the_model(base_model):
    model = load_for_training(base_model, TrainConfig(max_seq_length=4096, device="cpu"), PROMPTS)
    assert model.max_seq_length == 512
    assert model.prompts == {"query": "query: ", "document": "passage: "}


def test_fewer_than_two_rows_is_an_input_error(tmp_path, base_model):
    contracts.write_jsonl(tmp_path / contracts.TRAIN_FILE, [{"anchor": "q", "positive": "p"}])
    with pytest.raises(InputError, match="at least 2"):
        train.run(tmp_path, tmp_path / "model", TrainConfig(), base_model=base_model, prompts=PROMPTS)


@pytest.mark.slow
def test_compiled_encoder_trains_like_eager_and_saves_a_plain_model(tmp_path, trained, small_mined, base_model):
    """train.compile=True: the compiled forward computes the eager embeddings, training with it lowers the loss,
    and the saved model carries no compiled wrapper. (Weights are not compared with eager training: dropout masks
    come from another RNG stream under compilation, and two Adam steps follow the sign of those noisy gradients.)"""
    from sentence_transformers import SentenceTransformer

    model = load_for_training(base_model, TrainConfig(**SMALL), PROMPTS)
    model.eval()
    texts = ["How does the assert statement behave under -O?", "A much longer text " * 20, "short"]
    with torch.no_grad():
        eager = embed(model, texts, "query: ")
        restore = compile_encoder(model)
        torch.testing.assert_close(embed(model, texts, "query: "), eager, atol=1e-5, rtol=0)
        restore()
    assert "forward" not in vars(model[0].model)

    m = train.run(small_mined, tmp_path / "compiled", TrainConfig(**SMALL, compile=True), base_model=base_model,
                  prompts=PROMPTS)
    assert m.counts["steps"] == 2
    saved = SentenceTransformer(str(tmp_path / "compiled"), device="cpu")
    assert "forward" not in vars(saved[0].model)
    examples = contracts.read_train_examples(small_mined)
    before = _eval_loss(load_for_training(base_model, TrainConfig(**SMALL), PROMPTS), examples, 0.05)
    assert _eval_loss(saved, examples, 0.05) < before - 0.05

"""The optimizer and learning-rate schedule of a run: layer-wise learning-rate decay on the real base model (the
groups' rates, and what two real AdamW steps do to the bottom and top layers) and the decay after the warm-up."""

from __future__ import annotations

import math

import pytest

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts import TrainExample
from embedforge.stages import train
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.layer_decay import layer_depths
from embedforge.stages.train.setup import (
    load_for_training,
    make_optimizer,
    make_stepper,
)

PROMPTS = PromptsConfig()


@pytest.fixture(scope="module")
def model(base_model):
    return load_for_training(base_model, TrainConfig(device="cpu", max_seq_length=32), PROMPTS)


def test_depths_follow_the_layer_stack(model):
    """MiniLM-L6: embeddings 0, encoder layer i at i + 1, the pooler above the stack at the top (6)."""
    depths = layer_depths(model)
    assert all(d == 0 for n, d in depths.items() if ".embeddings." in n)
    for i in range(6):
        assert {d for n, d in depths.items() if f".encoder.layer.{i}." in n} == {i + 1}
    assert {d for n, d in depths.items() if ".pooler." in n} == {6}
    assert len(depths) == sum(1 for p in model.parameters() if p.requires_grad)


def test_the_stack_is_the_list_with_the_most_weights_not_the_longest():
    """A mixture-of-experts block holds a longer list (8 experts) than the stack of blocks (2): the experts take
    their block's depth."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(8))

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.layers = torch.nn.ModuleList(Block() for _ in range(2))
            self.norm = torch.nn.LayerNorm(4)

    depths = layer_depths(Tiny())
    assert depths["embed.weight"] == 0 and depths["norm.weight"] == 2
    assert {d for n, d in depths.items() if n.startswith("layers.0.")} == {1}
    assert {d for n, d in depths.items() if n.startswith("layers.1.")} == {2}


def test_optimizer_scales_each_layers_rate_and_decays_matrices_only(model):
    cfg = TrainConfig(device="cpu", learning_rate=1e-3, layer_decay=0.5, weight_decay=0.01)
    opt = make_optimizer(model, cfg)
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    for name, depth in layer_depths(model).items():
        lr, wd = rate[id(named[name])]
        assert lr == pytest.approx(1e-3 * 0.5 ** (6 - depth)), name
        assert wd == (0.01 if named[name].ndim >= 2 else 0.0), name
    one = make_optimizer(model, TrainConfig(device="cpu", learning_rate=1e-3, weight_decay=0.01))
    assert [(g["lr"], g["weight_decay"]) for g in one.param_groups] == [(1e-3, 0.01), (1e-3, 0.0)]


def _rows(tmp_path):
    rows = [TrainExample(anchor=f"question {i} about subject {i}", positive=f"a passage on subject {i}",
                         negatives=[f"a passage on subject {i + 1}"]) for i in range(8)]
    contracts.write_jsonl(tmp_path / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return tmp_path


def _moved(out, base_model, layer: int) -> float:
    """Mean absolute change of encoder layer ``layer``'s query weights from the base model."""
    from safetensors.torch import load_file

    key = f"encoder.layer.{layer}.attention.self.query.weight"
    trained = {k.split("model.", 1)[-1]: v for k, v in load_file(str(out / "model.safetensors")).items()}
    base = {k.split("model.", 1)[-1]: v for k, v in load_file(f"{base_model}/model.safetensors").items()}
    return float((trained[key] - base[key].float()).abs().mean())


def test_two_real_steps_move_the_bottom_layer_by_the_decayed_rate(tmp_path, base_model):
    """AdamW's first steps move each weight by about its learning rate, so with layer_decay 0.25 layer 0 (rate x
    0.25^5) moves about 1/1000 of what layer 5 (full rate) moves; with one rate for all they move alike."""
    mined = _rows(tmp_path)
    cfg = {"epochs": 1, "batch_size": 4, "max_seq_length": 32, "learning_rate": 2e-4, "warmup_ratio": 0.0,
           "device": "cpu", "seed": 7}
    ratios = {}
    for decay in (0.25, 1.0):
        out = tmp_path / f"decay{decay}"
        train.run(mined, out, TrainConfig(**cfg, layer_decay=decay), base_model=base_model, prompts=PROMPTS)
        ratios[decay] = _moved(out, base_model, 0) / _moved(out, base_model, 5)
    assert 0.25**5 / 3 < ratios[0.25] < 0.25**5 * 3, ratios
    assert 0.3 < ratios[1.0] < 3, ratios


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_rate_decays_after_the_warm_up_as_configured(model, schedule):
    cfg = TrainConfig(device="cpu", learning_rate=1e-3, warmup_ratio=0.2, lr_schedule=schedule)
    stepper = make_stepper(model, cfg, PROMPTS, steps=10, dist=DistContext())
    rates = []
    for _ in range(10):
        rates.append(stepper.scheduler.get_last_lr()[0])
        stepper.optimizer.step()
        stepper.scheduler.step()
    assert rates[:3] == pytest.approx([0.0, 5e-4, 1e-3])  # 2 warm-up steps
    progress = [(k - 2) / 8 for k in range(2, 10)]
    expected = [1 - p if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * p)) for p in progress]
    assert rates[2:] == pytest.approx([1e-3 * e for e in expected])
    assert TrainConfig().lr_schedule == "linear" and TrainConfig().weight_decay == 0.0

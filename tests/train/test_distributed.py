"""Data-parallel training with torchrun on CPU (Gloo): two processes splitting one global batch must compute the
single-process loss and gradients of that batch, and `embedforge train` with train.processes=2 must train and
save one model (rank 0) with the same kind of manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.stages import train
from embedforge.stages.train import distributed
from embedforge.stages.train.batching import collate
from embedforge.stages.train.losses import InfoNCELoss
from embedforge.stages.train.setup import load_for_training
from embedforge.stages.train.step import Stepper

HERE = Path(__file__).resolve().parents[1] / "support"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def five_rows(tmp_path_factory, mined_dir) -> Path:
    """5 real mined rows (odd: the ranks get 3 and 2 rows) with 0-2 negatives each (uneven gathers)."""
    rows = contracts.read_train_examples(mined_dir)[:5]
    rows = [r.model_copy(update={"negatives": r.negatives[: i % 3]}) for i, r in enumerate(rows)]
    out = tmp_path_factory.mktemp("five_rows")
    contracts.write_jsonl(out / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return out


def test_shard_orders_rows_rank_major():
    ctx = distributed.DistContext(rank=1, world=2)
    s = distributed.shard([10, 11, 12, 13, 14], ctx, negatives_of=lambda i: i - 10)
    assert (s.order, s.mine) == ([10, 12, 14, 11, 13], [11, 13])
    assert (s.anchors, s.negatives) == ([3, 2], [0 + 2 + 4, 1 + 3])
    one = distributed.shard([1, 2], distributed.DistContext())
    assert (one.order, one.mine, one.anchors) == ([1, 2], [1, 2], [2])


@pytest.mark.parametrize("mode", ["plain", "cached", "fsdp", "fsdp_cached"])
def test_two_processes_compute_the_single_process_loss_and_gradients(tmp_path, five_rows, base_model, mode):
    """Each mode of the distributed step (dist_grad_worker.py) against the plain single-process step."""
    out = tmp_path / "dist.pt"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(HERE / "dist_grad_worker.py"), base_model, str(five_rows), str(out), mode],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    got = torch.load(out)
    assert got["checksums"][0] == got["checksums"][1]  # the replicas hold identical gradients

    examples = contracts.read_train_examples(five_rows)
    known = {}
    for e in examples:
        known.setdefault(e.anchor, set()).add(e.positive)
    model = load_for_training(base_model, TrainConfig(max_seq_length=32, device="cpu"),
                                    PromptsConfig(query="query: ", document="passage: "))
    model.eval()
    stepper = Stepper(model, InfoNCELoss(0.05), None, None, "query: ", "passage: ", 1.0)
    loss = stepper.loss(collate(examples, list(range(5)), known))
    loss.backward()
    assert got["loss"] == pytest.approx(loss.item(), abs=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def _train_cli(tmp_path: Path, mined: Path, base_model: str, train: str) -> tuple[subprocess.CompletedProcess, object]:
    """`embedforge train` with ``train: <train>`` as its config (it must succeed); its output and the manifest."""
    config = tmp_path / "c.yaml"
    config.write_text(f"train: {train}\n")
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "train", "--mined", str(mined), "--out",
                        str(tmp_path / "model"), "--config", str(config), "--base-model", base_model],
                       capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r, contracts.read_manifest(tmp_path / "model")


@pytest.mark.parametrize("extra", ["", ", sharding: fsdp, cached: true, cache_chunk_tokens: 100"])
def test_embedforge_train_with_two_processes_saves_one_model(tmp_path, five_rows, base_model, extra):
    from sentence_transformers import SentenceTransformer

    r, m = _train_cli(tmp_path, five_rows, base_model,
                      f"{{epochs: 2, batch_size: 4, max_seq_length: 32, device: cpu, processes: 2{extra}}}")
    assert m.result.processes == 2 and m.counts["steps"] == 4
    assert json.loads(r.stdout)["stage"] == "train"  # the manifest rank 0 wrote, printed once
    emb = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(["a question"], prompt_name="query")
    assert emb.shape == (1, 384)


def test_the_worker_entry_point_reports_bad_input_in_one_line(tmp_path):
    """`python -m embedforge.stages.train` (what torchrun runs on every rank) fails with one line naming the file."""
    contracts.write_jsonl(tmp_path / contracts.TRAIN_FILE, [{"anchor": "q", "positive": "p"}])
    config = tmp_path / "c.yaml"
    config.write_text("train: {device: cpu}\n")
    r = subprocess.run([sys.executable, "-m", "embedforge.stages.train", "--mined", str(tmp_path), "--out",
                        str(tmp_path / "model"), "--config", str(config)], capture_output=True, text=True, env=_env(),
                       timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / contracts.TRAIN_FILE} has 1 training rows")


@pytest.mark.parametrize("sharding", [{"sharding": "none"}, {"sharding": "fsdp"},
                                      {"sharding": "fsdp", "base_weight": 0.3}])
def test_the_auto_schedule_probes_data_parallel_under_torchrun(tmp_path, five_rows, base_model, sharding):
    """train.schedule=auto with two processes: every rank trains every probe on its share of the same global
    batches (FSDP-sharded too) and the ranks train the one schedule rank 0 chose (they could not finish one run
    otherwise); the probes are those a single process runs. With FSDP and WiSE-FT the fixed schedule is kept, and
    says why."""
    settings = {"epochs": 2, "batch_size": 4, "max_seq_length": 32, "device": "cpu", "learning_rate": 1e-4,
                "schedule": {"mode": "auto", "folds": 2, "min_holdout_queries": 2, "budget": 2,
                             "candidates": [[1, 1], [2, 1]]}}
    _, m = _train_cli(tmp_path, five_rows, base_model, json.dumps({**settings, **sharding, "processes": 2}))
    choice = m.result.schedule
    assert m.result.processes == 2 and m.config["epochs"] == choice.epochs
    if "base_weight" in sharding:
        assert "sharding=fsdp and WiSE-FT" in choice.reason and not choice.trials
        return
    one = TrainConfig.model_validate(settings)  # one process, the whole model
    single = train.run(five_rows, tmp_path / "single", one, base_model=base_model, prompts=PromptsConfig())
    expected = single.result.schedule
    assert choice.heldout_queries == expected.heldout_queries == 5  # every train query held out once
    assert [(t.learning_rate, t.steps, list(t.scores)) for t in choice.trials] == [
        (t.learning_rate, t.steps, list(t.scores)) for t in expected.trials]
    assert choice.probe_steps == expected.probe_steps > 0 and "torchrun" not in choice.reason

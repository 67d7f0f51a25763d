"""Checkpoints of the final run: a train step killed mid-run (SIGKILL, as a preempted pod) and run again continues
from its last checkpoint and saves exactly the weights an uninterrupted run saves; the checkpoint is removed once
the model is saved, and nothing is written when checkpoints are off."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import sigkill_when

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.stages import train

# 48 rows at batch 4 and 2 epochs: 24 steps; dropout on (train mode), so the random streams must be restored too.
RUN = {"batch_size": 4, "max_seq_length": 32, "warmup_ratio": 0.2, "seed": 11, "device": "cpu", "epochs": 2.0,
       "learning_rate": 1e-4, "average_last": 0.3}

_TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    from embedforge.stages import train
    from embedforge.config import PromptsConfig, TrainConfig
    train.run(sys.argv[1], sys.argv[2], TrainConfig.model_validate_json(sys.argv[3]), base_model=sys.argv[4],
              prompts=PromptsConfig())
""")


@pytest.fixture
def run_rows(tmp_path, mined_dir) -> Path:
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in contracts.read_train_examples(mined_dir)[:48]]
    contracts.write_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return tmp_path / "mined"


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _checkpoints(work_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in work_dir.glob("run-*/step-*") if "." not in p.name)


def test_a_run_killed_mid_way_continues_from_its_checkpoint_to_the_same_weights(tmp_path, run_rows, base_model):
    reference = train.run(run_rows, tmp_path / "reference", TrainConfig(**RUN, checkpoint_minutes=0.0),
                          base_model=base_model, prompts=PromptsConfig())
    assert reference.result.resumed_from_step == 0
    cfg = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(tmp_path / "work"))  # after every step
    stderr = sigkill_when(  # mid-step, maybe mid-save
        [sys.executable, "-c", _TRAIN_SCRIPT, str(run_rows), str(tmp_path / "killed"), cfg.model_dump_json(),
         base_model], lambda: max(_checkpoints(tmp_path / "work"), default=0) >= 8)
    saved = _checkpoints(tmp_path / "work")
    assert saved and 8 <= saved[-1] < 24, f"the run should have been killed mid-way ({saved}): {stderr[-2000:]}"
    assert len(saved) <= 2  # the previous checkpoint is deleted once the next one is complete

    resumed = train.run(run_rows, tmp_path / "resumed", cfg, base_model=base_model, prompts=PromptsConfig())
    assert resumed.result.resumed_from_step == saved[-1] and resumed.counts["steps"] == 24
    ref_w, got_w = _weights(tmp_path / "reference"), _weights(tmp_path / "resumed")
    assert ref_w.keys() == got_w.keys()
    assert all((ref_w[k] == got_w[k]).all() for k in ref_w), "a continued run must save the uninterrupted run's weights"
    assert resumed.result.loss_history == reference.result.loss_history
    assert not list((tmp_path / "work").glob("run-*"))  # the model is saved: the checkpoint is removed


def test_no_checkpoint_is_written_when_they_are_off_or_the_run_is_short(tmp_path, run_rows, base_model):
    train.run(run_rows, tmp_path / "off", TrainConfig(**RUN, checkpoint_minutes=0.0, work_dir=str(tmp_path / "a")),
              base_model=base_model, prompts=PromptsConfig())
    assert not (tmp_path / "a").exists()
    m = train.run(run_rows, tmp_path / "short", TrainConfig(**RUN, work_dir=str(tmp_path / "b")),  # 30 minutes
                  base_model=base_model, prompts=PromptsConfig())
    assert m.result.resumed_from_step == 0 and not list((tmp_path / "b").glob("run-*/step-*"))


def _cli_train(out: Path, mined: Path, base_model: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "embedforge.cli", "train", "--mined", str(mined), "--out", str(out), "--config",
            str(config), "--base-model", base_model]


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_processes_continue_from_their_checkpoint_to_the_same_weights(tmp_path, run_rows, base_model, sharding):
    """Under torchrun the ranks agree on when to save (rank 0 decides every 25 steps) and what to restore; each
    rank's random streams are its own. With FSDP each rank writes and reads its own shards of the weights and the
    AdamW moments (torch.distributed.checkpoint). 5 rows, batch 4: 2 steps an epoch, 30 epochs = 60
    steps."""
    rows = contracts.read_train_examples(run_rows)[:5]
    contracts.write_jsonl(tmp_path / "five" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    settings = ("epochs: 30, batch_size: 4, max_seq_length: 32, device: cpu, processes: 2, learning_rate: 1e-4, "
                f"sharding: {sharding}, average_last: {0.5 if sharding == 'none' else 0}")  # (fsdp: no tail average)
    (tmp_path / "ref.yaml").write_text(f"train: {{{settings}, checkpoint_minutes: 0}}\n")
    (tmp_path / "ck.yaml").write_text(f"train: {{{settings}, checkpoint_minutes: 1e-9, work_dir: {tmp_path / 'work'}}}\n")
    r = subprocess.run(_cli_train(tmp_path / "reference", tmp_path / "five", base_model, tmp_path / "ref.yaml"),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    stderr = sigkill_when(_cli_train(tmp_path / "killed", tmp_path / "five", base_model, tmp_path / "ck.yaml"),
                          lambda: bool(_checkpoints(tmp_path / "work")), env)  # torchrun and both workers at once
    saved = _checkpoints(tmp_path / "work")
    assert saved and saved[-1] in (25, 50), f"killed before a checkpoint or after the run ({saved}): {stderr[-2000:]}"
    if sharding == "fsdp":  # kept for the damaged-shard run below
        shutil.copytree(tmp_path / "work", tmp_path / "work_copy")
    r = subprocess.run(_cli_train(tmp_path / "resumed", tmp_path / "five", base_model, tmp_path / "ck.yaml"),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = contracts.read_manifest(tmp_path / "resumed")
    assert m.result.resumed_from_step == saved[-1], r.stderr[-3000:]
    assert m.result.processes == 2 and m.counts["steps"] == 60
    assert "continuing from the checkpoint" in r.stderr  # (the workers' logs reach the step's output)
    ref_w, got_w = _weights(tmp_path / "reference"), _weights(tmp_path / "resumed")
    assert all((ref_w[k] == got_w[k]).all() for k in ref_w), "a continued run must save the uninterrupted run's weights"
    if sharding == "fsdp":  # a damaged shard: every rank starts from step 0 with a fresh optimizer, nothing half-read
        shutil.rmtree(tmp_path / "work")
        shutil.copytree(tmp_path / "work_copy", tmp_path / "work")
        shard = max((tmp_path / "work").glob("run-*/step-*/shards/*.distcp"), key=lambda p: p.stat().st_size)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        r = subprocess.run(_cli_train(tmp_path / "restarted", tmp_path / "five", base_model, tmp_path / "ck.yaml"),
                           capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0 and "cannot read the checkpoint" in r.stderr, r.stderr[-3000:]
        assert contracts.read_manifest(tmp_path / "restarted").result.resumed_from_step == 0
        got_w = _weights(tmp_path / "restarted")
        assert all((ref_w[k] == got_w[k]).all() for k in ref_w), "after a failed read the run must start afresh"


def test_a_damaged_checkpoint_or_an_unwritable_work_folder_does_not_stop_the_run(tmp_path, run_rows, base_model,
                                                                                 caplog):
    from embedforge.contracts.positives import known_positives
    from embedforge.stages.train import work
    from embedforge.stages.train.wise_ft import resolve_base_weight

    cfg = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(tmp_path / "work"))
    rows = contracts.read_train_examples(run_rows)
    folder = work.folder(cfg, "run", work.identity(rows, known_positives(run_rows, rows), cfg, base_model,
                                                   PromptsConfig(), None, resolve_base_weight(cfg, run_rows), 1))
    (folder / "step-5").mkdir(parents=True)
    (folder / "step-5" / "state.pt").write_bytes(b"not a checkpoint")  # what a storage fault could leave
    m = train.run(run_rows, tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    assert m.result.resumed_from_step == 0 and "cannot read the checkpoint" in caplog.text
    assert not folder.exists()  # the run finished (checkpointing on the way) and removed its folder

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # every write below it fails
    auto = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(blocked), schedule={
        "mode": "auto", "folds": 2, "min_holdout_queries": 4, "budget": 1.0, "candidates": [(1.0, 1.0)]})
    m = train.run(run_rows, tmp_path / "blocked", auto, base_model=base_model, prompts=PromptsConfig())
    assert m.result.schedule.trials and m.counts["steps"] > 0
    assert "searching without one" in caplog.text and "training goes on without checkpoints" in caplog.text

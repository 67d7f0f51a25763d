"""A checkpoint is data, never code, and one that does not fit the run is skipped, not half loaded.

* a pickle planted as ``state.pt`` / ``rng-0.pt`` in the train work folder (it would run code when unpickled) is
  never executed when ``embedforge train`` continues: the run warns and trains from its first step;
* a checkpoint that reads but does not fit (other weight names or shapes, optimizer moments of another shape, not a
  dict, random streams that do not load) gives the documented warning ``cannot read the checkpoint ...; training
  from the first step`` and the run saves the weights of an uninterrupted run — nothing of it was applied;
* ``embedforge train`` keeps its work under its own ``--out`` (``.train_work``, mode 0700, removed once empty), not
  in a folder other users share; a kept folder that is a link is not read.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import sigkill_when

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.stages import train

# 48 rows at batch 4 and 2 epochs: 24 steps (as tests/train/test_checkpoint.py)
RUN = {"batch_size": 4, "max_seq_length": 32, "warmup_ratio": 0.2, "seed": 11, "device": "cpu", "epochs": 2.0,
       "learning_rate": 1e-4, "average_last": 0.3}

_TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    from embedforge.stages import train
    from embedforge.config import PromptsConfig, TrainConfig
    train.run(sys.argv[1], sys.argv[2], TrainConfig.model_validate_json(sys.argv[3]), base_model=sys.argv[4],
              prompts=PromptsConfig())
""")


class _WritesAMarker:
    """Unpickled, this opens (creates) the marker file: any code a planted pickle could run instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def run_rows(tmp_path_factory, mined_dir) -> Path:
    root = tmp_path_factory.mktemp("safety")
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in contracts.read_train_examples(mined_dir)[:48]]
    contracts.write_jsonl(root / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return root / "mined"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_rows, base_model) -> dict:
    """The weights of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "model"
    train.run(run_rows, out, TrainConfig(**RUN, checkpoint_minutes=0.0), base_model=base_model, prompts=PromptsConfig())
    return _weights(out)


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, run_rows, base_model) -> Path:
    """A copy of the ``run-<hash>`` folder of a run killed (SIGKILL) after its first checkpoints."""
    root = tmp_path_factory.mktemp("killed")
    cfg = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(root / "work"))  # a checkpoint after every step
    stderr = sigkill_when([sys.executable, "-c", _TRAIN_SCRIPT, str(run_rows), str(root / "killed"),
                           cfg.model_dump_json(), base_model], lambda: bool(_complete(root / "work")))
    kept = list((root / "work").glob("run-*"))
    assert len(kept) == 1 and _complete(root / "work"), stderr[-2000:]
    shutil.copytree(kept[0], root / "copy" / kept[0].name)
    return root / "copy" / kept[0].name


def _complete(work: Path) -> list[Path]:
    return sorted(p for p in work.glob("run-*/step-*") if "." not in p.name)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _cli_train(out: Path, mined: Path, base_model: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "embedforge.cli", "train", "--mined", str(mined), "--out", str(out), "--config",
            str(config), "--base-model", base_model]


def test_a_planted_pickle_never_runs_when_train_continues(tmp_path, run_rows, base_model, reference):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    settings = ", ".join(f"{k}: {v}" for k, v in RUN.items())
    (tmp_path / "train.yaml").write_text(f"train: {{{settings}, checkpoint_minutes: 1e-9}}\n")  # no work_dir
    out = tmp_path / "model"
    work = out / ".train_work"
    stderr = sigkill_when(_cli_train(out, run_rows, base_model, tmp_path / "train.yaml"),
                          lambda: bool(_complete(work)), env)
    checkpoints = _complete(work)
    assert checkpoints, f"embedforge train keeps its work under its --out: {stderr[-2000:]}"
    for folder in (work, checkpoints[-1].parent):  # private to this user
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, oct(folder.stat().st_mode)

    import torch

    marker = tmp_path / "code-ran"
    for name in ("state.pt", "rng-0.pt"):  # what someone with write access to the folder could plant
        torch.save({"model": _WritesAMarker(marker)}, checkpoints[-1] / name)
    r = subprocess.run(_cli_train(out, run_rows, base_model, tmp_path / "train.yaml"), capture_output=True,
                       text=True, env=env, timeout=900, check=False)
    assert not marker.exists(), "a checkpoint was unpickled: the planted code ran"
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cannot read the checkpoint" in r.stderr and "more than tensors and plain data" in r.stderr, r.stderr[-3000:]
    assert contracts.read_manifest(out).result.resumed_from_step == 0
    got = _weights(out)
    assert all((reference[k] == got[k]).all() for k in reference), "after a refused checkpoint the run starts afresh"
    assert not work.exists()  # nothing kept any more: the work folder is removed


def _wrong_shape(state: dict, rng: dict) -> None:
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name].new_zeros([d + 1 for d in state["model"][name].shape])


def _wrong_names(state: dict, rng: dict) -> None:
    name = next(iter(state["model"]))
    state["model"]["renamed." + name] = state["model"].pop(name)


def _wrong_moments(state: dict, rng: dict) -> None:
    import torch

    moments = next(iter(state["optimizer"]["state"].values()))
    moments["exp_avg"] = torch.zeros(3)


def _wrong_streams(state: dict, rng: dict) -> None:
    import torch

    rng["torch"] = torch.zeros(5, dtype=torch.uint8)


@pytest.mark.parametrize("damage, says", [
    (_wrong_shape, "has shape"), (_wrong_names, "other names"), (_wrong_moments, "another shape than its weight"),
    (_wrong_streams, "random streams do not load"), (None, "not a checkpoint"),
], ids=["weight-shape", "weight-names", "optimizer-moments", "random-streams", "not-a-dict"])
def test_a_checkpoint_that_does_not_fit_gives_the_warning_and_a_fresh_start(
        tmp_path, run_rows, base_model, reference, real_checkpoint, caplog, damage, says):
    import torch

    work = tmp_path / "work"
    shutil.copytree(real_checkpoint, work / real_checkpoint.name)
    where = _complete(work)[-1]
    state = torch.load(where / "state.pt", weights_only=True)  # (what we save is plain data)
    rng = torch.load(where / "rng-0.pt", weights_only=True)
    if damage is None:
        torch.save([1, 2, 3], where / "state.pt")
    else:
        damage(state, rng)
        torch.save(state, where / "state.pt")
        torch.save(rng, where / "rng-0.pt")

    cfg = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(work))
    m = train.run(run_rows, tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    assert m.result.resumed_from_step == 0
    assert "cannot read the checkpoint" in caplog.text and "training from the first step" in caplog.text
    assert says in caplog.text, caplog.text[-2000:]
    got = _weights(tmp_path / "model")
    assert all((reference[k] == got[k]).all() for k in reference), "nothing of the skipped checkpoint may be applied"


def test_an_unchanged_checkpoint_still_continues(tmp_path, run_rows, base_model, reference, real_checkpoint):
    """What we save loads with weights_only (the numpy random stream as a tensor and numbers): the run continues
    from it to the uninterrupted run's weights."""
    work = tmp_path / "work"
    shutil.copytree(real_checkpoint, work / real_checkpoint.name)
    step = int(_complete(work)[-1].name.split("-")[1])
    cfg = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(work))
    m = train.run(run_rows, tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    assert m.result.resumed_from_step == step > 0
    got = _weights(tmp_path / "model")
    assert all((reference[k] == got[k]).all() for k in reference)


def test_a_kept_folder_that_is_a_link_is_not_read(tmp_path, run_rows, base_model, real_checkpoint, caplog):
    """A ``run-<hash>`` that points elsewhere (someone else's files) is neither read nor written."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(real_checkpoint, elsewhere)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / real_checkpoint.name).symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir())

    cfg = TrainConfig(**RUN, checkpoint_minutes=1e-9, work_dir=str(work))
    m = train.run(run_rows, tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    assert m.result.resumed_from_step == 0
    assert "is a link; training from the first step without checkpoints" in caplog.text, caplog.text[-2000:]
    assert sorted(p.name for p in elsewhere.iterdir()) == before  # nothing written through the link

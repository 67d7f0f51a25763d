"""Seconds and bytes of one final-run checkpoint (``train.checkpoint_minutes``) for a model shape, on this machine.

Builds the shape (bench/train_speed.py :data:`SHAPES`: MiniLM, BERT-base, Llama-3.2-1B, ... random-init), trains
one real step with embedforge's stepper (so AdamW holds its moments), then times :class:`~embedforge.stages.train.
checkpoint.Checkpoints` writing that state (weights, optimizer, schedule, scaler, loss history, random streams) to
``--dir`` and reading it back into the run, as a rerun does. The cost per hour of training is ``write_s`` × 60 /
``train.checkpoint_minutes``.

    python bench/checkpoint_cost.py --shape llama-1b --dir /tmp/ck --json docs/data/checkpoint_cost.jsonl
    python bench/checkpoint_cost.py --shape tiny-llama --device cpu   # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path

from train_speed import SHAPES, shape_folder

from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts import TrainExample
from embedforge.retrieval.encode import pick_device
from embedforge.stages.train.checkpoint import Checkpoints
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.loss_log import LossLog
from embedforge.stages.train.setup import make_stepper, prepare_model
from embedforge.stages.train.soup import WeightAverage


def measure(shape: str, folder: Path, device: str, batch_size: int = 8) -> dict:
    import torch

    work = Path(tempfile.mkdtemp(prefix="ckcost-"))
    base = shape_folder(shape, work, 64, device)
    cfg = TrainConfig(device=device, batch_size=batch_size, max_seq_length=64)
    model, prompts, _ = prepare_model(base, cfg, PromptsConfig(), None, DistContext(), False)
    rows = [TrainExample(anchor=f"question {i} about topic {i % 3}", positive=f"an answer text number {i}",
                         negatives=[f"an unrelated passage {i}"]) for i in range(batch_size)]
    stepper = make_stepper(model, cfg, prompts, 10, DistContext())
    stepper.tokenize(rows)
    model.train()
    stepper.step_rows(rows, list(range(batch_size)), {})
    losses, tail = LossLog(window=1), WeightAverage()
    losses.add(1, torch.tensor(1.0))
    shutil.rmtree(folder, ignore_errors=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    Checkpoints(folder, every_s=0.0).after_step(1, 10, stepper, losses, tail)
    write_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    t0 = time.perf_counter()
    restored = Checkpoints(folder, every_s=0.0).restore(stepper, losses, tail)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    read_s = time.perf_counter() - t0
    assert restored == 1, "the checkpoint just written must be restored"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    params = sum(p.numel() for p in model.parameters())
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return {"shape": shape, "params": params, "checkpoint_gib": round(size / 2**30, 2), "write_s": round(write_s, 2),
            "read_s": round(read_s, 2), "write_gib_per_s": round(size / 2**30 / max(write_s, 1e-9), 2),
            "share_of_training_at_30_min": round(write_s / 1800, 5), "card": card,
            "date": datetime.date.today().isoformat(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="minilm", choices=sorted(SHAPES))
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "embedforge-checkpoint-cost")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="append the result as one JSON line here")
    args = ap.parse_args(argv)
    row = measure(args.shape, args.dir, pick_device(args.device))
    print(json.dumps(row), flush=True)
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

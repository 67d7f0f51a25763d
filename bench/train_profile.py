"""Where a training step's time goes: torch.profiler over a few steps of embedforge's train loop.

Not a test. Same rows as ``bench/train_speed.py``; prints per-phase wall times (tokenised features, forward,
loss, backward, optimizer) measured with CUDA synchronisation, then the profiler's top operators by device and by
host time. ``--compile`` wraps the encoder in ``torch.compile(dynamic=True)`` to see what compilation buys.

    python bench/train_profile.py --data ../shared/data/arguana --batch-size 128 --steps 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train_speed import build_rows  # noqa: E402

from embedforge.config import PromptsConfig, TrainConfig  # noqa: E402
from embedforge.contracts import TrainExample  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "arguana")
    ap.add_argument("--base-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch-tokens", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from embedforge.encode import pick_device, resolve_model_path
    from embedforge.train.batching import collate, plan_steps
    from embedforge.train.losses import InfoNCELoss
    from embedforge.train.setup import autocast_dtype, compile_encoder, load_for_training, make_optimizer
    from embedforge.train.step import Stepper

    device = pick_device(args.device)
    rows = build_rows(args.data, args.batch_size * (args.steps + 5), 13)
    examples = [TrainExample.from_columns(r) for r in rows]
    cfg = TrainConfig(batch_size=args.batch_size, device=device, micro_batch_tokens=args.micro_batch_tokens)
    model = load_for_training(resolve_model_path(args.base_model), cfg, PromptsConfig())
    if args.compile:
        compile_encoder(model)
    opt = make_optimizer(model, cfg)
    stepper = Stepper(model, InfoNCELoss(), opt, get_cosine_schedule_with_warmup(opt, 1, 1000), None, None, 1.0,
                      amp_dtype=autocast_dtype(cfg, device), device_type=model.device.type,
                      micro_batch_tokens=cfg.resolved_micro_batch_tokens(model.device.type))
    stepper.tokenize(examples)
    plan = plan_steps(examples, args.batch_size, 1, 13)
    known = {e.anchor: {e.positive} for e in examples}
    model.train()

    def sync() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    for rows_ in plan[:5]:  # warm-up (and compilation)
        stepper.step(collate(examples, rows_, known))
    # phase timing, synchronised
    phases = {"collate": 0.0, "forward+loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    for rows_ in plan[5 : 5 + args.steps]:
        t0 = sync()
        batch = collate(examples, rows_, known)
        t1 = sync()
        with torch.autocast(model.device.type, dtype=stepper.amp_dtype, enabled=stepper.amp_dtype is not None):
            loss = stepper.loss(batch)
        t2 = sync()
        loss.backward()
        t3 = sync()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = sync()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[k] += v
    print("ms/step (synchronised):", {k: round(1000 * v / args.steps, 1) for k, v in phases.items()})
    # unsynchronised steady state, as the loop runs
    t0 = sync()
    for rows_ in plan[5 : 5 + args.steps]:
        stepper.step(collate(examples, rows_, known))
    print(f"ms/step (pipelined): {1000 * (sync() - t0) / args.steps:.1f}")
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for rows_ in plan[5 : 5 + min(args.steps, 5)]:
            stepper.step(collate(examples, rows_, known))
        sync()
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

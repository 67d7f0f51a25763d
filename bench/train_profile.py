"""Where a training step's time goes: torch.profiler over real steps of embedforge's train loop.

Not a test. Same rows and model shapes as ``bench/train_speed.py`` (``--shape``: the bundled MiniLM or random-init
BERT-base / Llama-3.2-1B / Qwen3-0.6B weights). Prints

* per-phase wall times (collate, forward + loss, backward, optimizer) measured with CUDA synchronisation, and the
  unsynchronised steady-state time per step, as the loop runs;
* from the profiler: host (CPU) time vs device (GPU kernel) time per step, device busy share of the wall time, the
  device time split by kernel family (matmul, attention, elementwise/reduction, copies, other), and the top
  kernels by device time and operators by host time.

``--packing``, ``--micro-batch-tokens`` and ``--compile`` set the train config as in a run.

    python bench/train_profile.py --shape llama-1b --batch-size 32 --steps 10
    python bench/train_profile.py --shape tiny-llama --batch-size 4 --steps 2 --max-seq-length 32 --device cpu  # smoke
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train_speed import add_model_args, build_rows, shape_folder  # noqa: E402

from embedforge.config import PromptsConfig, TrainConfig  # noqa: E402
from embedforge.contracts import TrainExample  # noqa: E402

#: kernel family -> name pattern (CUDA kernel names: cuBLAS/CUTLASS GEMMs, SDPA/flash/flex attention, ...).
KERNEL_FAMILIES = [
    ("matmul", re.compile(r"gemm|cutlass|nvjet|xmma|cublas|sm\d+_.*(tensorop|mma)|matmul", re.IGNORECASE)),
    ("attention", re.compile(r"fmha|flash|attention|attn|flex", re.IGNORECASE)),
    ("copy/memset", re.compile(r"memcpy|memset|copy", re.IGNORECASE)),
    ("elementwise/reduction", re.compile(r"elementwise|vectorized|reduce|norm|softmax|index|scatter|gather|cat", re.IGNORECASE)),
]


def _device_us(evt) -> float:
    """Self device time of a profiler row in microseconds (``self_device_time_total``; older: ``self_cuda_``)."""
    return float(getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0) or 0)


def _on_device(evt) -> bool:
    """True for an event that ran on the device (a kernel or copy), not a host operator that launched one."""
    kind = getattr(evt, "device_type", None)
    if kind is not None:
        return "CPU" not in str(kind)
    return not re.match(r"(aten|autograd|Optimizer|cuda|cu[A-Z])", evt.key)


def time_split(prof, steps: int, wall_s: float) -> None:
    """Print host vs device time per step and the device time per kernel family."""
    rows = prof.key_averages()
    host_us = sum(e.self_cpu_time_total for e in rows)
    # Only the device's own events (kernels, memcpy/memset): operator rows (aten::mm, ...) carry the self device
    # time of the kernels they launched too, and counting both doubled the device time.
    kernels = [e for e in rows if _device_us(e) > 0 and _on_device(e)]
    device_us = sum(_device_us(e) for e in kernels)
    print(f"per step: wall {1000 * wall_s / steps:.1f} ms, host (CPU, self) {host_us / 1000 / steps:.1f} ms, "
          f"device (GPU kernels) {device_us / 1000 / steps:.1f} ms; device busy {device_us / 1e4 / wall_s:.0f} % "
          "of the wall time" if device_us else
          f"per step: wall {1000 * wall_s / steps:.1f} ms, host (CPU, self) {host_us / 1000 / steps:.1f} ms; no "
          "device kernels (CPU run)")
    if not device_us:
        return
    families: dict[str, float] = {}
    for e in kernels:
        name = next((fam for fam, pattern in KERNEL_FAMILIES if pattern.search(e.key)), "other")
        families[name] = families.get(name, 0.0) + _device_us(e)
    print("device time by kernel family:",
          ", ".join(f"{k} {100 * v / device_us:.1f} %" for k, v in sorted(families.items(), key=lambda kv: -kv[1])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro-batch-tokens", type=int, default=None)
    ap.add_argument("--packing", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--trace", type=Path, default=None, help="also write a Chrome trace of the profiled steps here")
    args = ap.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from embedforge.retrieval.encode import pick_device, resolve_model_path
    from embedforge.stages.train.batching import collate, plan_steps
    from embedforge.stages.train.distributed import DistContext
    from embedforge.stages.train.setup import (
        compile_encoder,
        load_for_training,
        make_stepper,
    )

    device = pick_device(args.device)
    warmup = 3
    rows = build_rows(args.data, args.batch_size * (warmup + 2 * args.steps), 13)
    examples = [TrainExample.from_columns(r) for r in rows]
    cfg = TrainConfig(batch_size=args.batch_size, device=device, micro_batch_tokens=args.micro_batch_tokens,
                      max_seq_length=args.max_seq_length, packing=args.packing, compile=args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        base = (resolve_model_path(args.base_model) if args.base_model else
                shape_folder(args.shape, Path(tmp), args.max_seq_length, device))
        model = load_for_training(base, cfg, PromptsConfig())
    plan = plan_steps(examples, args.batch_size, 1, 13)
    stepper = make_stepper(model, cfg, PromptsConfig(), len(plan), DistContext())
    if args.compile:
        compile_encoder(model)
    stepper.tokenize(examples)
    known = {e.anchor: {e.positive} for e in examples}
    model.train()
    print(f"{args.base_model or args.shape}, batch {args.batch_size}, {device}, precision {stepper.amp_dtype}, "
          f"micro-batch tokens {stepper.micro_batch_tokens}, packing {args.packing}")

    def sync() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    for rows_ in plan[:warmup]:  # warm-up (and compilation)
        stepper.step(collate(examples, rows_, known))
    timed = plan[warmup : warmup + args.steps]
    phases = {"collate": 0.0, "forward+loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    for rows_ in timed:
        t0 = sync()
        batch = collate(examples, rows_, known)
        t1 = sync()
        loss = stepper.loss(batch)
        t2 = sync()
        loss.backward()
        t3 = sync()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        stepper.optimizer.step()
        stepper.optimizer.zero_grad(set_to_none=True)
        t4 = sync()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[k] += v
    print("ms/step (synchronised):", {k: round(1000 * v / len(timed), 1) for k, v in phases.items()})
    t0 = sync()
    for rows_ in timed:  # unsynchronised steady state, as the loop runs
        stepper.step(collate(examples, rows_, known))
    print(f"ms/step (pipelined): {1000 * (sync() - t0) / len(timed):.1f}")

    profiled = plan[warmup + args.steps : warmup + 2 * args.steps] or timed
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        t0 = sync()
        for rows_ in profiled:
            stepper.step(collate(examples, rows_, known))
        wall = sync() - t0
    time_split(prof, len(profiled), wall)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

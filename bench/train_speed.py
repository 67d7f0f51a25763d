"""Training throughput and MFU: embedforge's train loop against ``SentenceTransformerTrainer`` on the same rows.

Not a test. Both trainers get the same ``(anchor, positive, negative_1..4)`` rows built from a BEIR corpus (anchor:
one sentence of a document; positive: the document; negatives: four other documents, seeded), the same base model,
batch size, ``max_seq_length`` (256), bf16 autocast on CUDA, one epoch. Each is timed end to end (load the model,
train, save) after a short warm-up run of both in the same process, so CUDA/cuBLAS start-up is paid by neither.

Useful work is counted the same way for both, from the tokenised texts (no padding):
``FLOPs = sum over texts of (6 x P x n + 12 x L x d x n^2)`` — ``P`` the encoder's matmul parameters (embeddings
excluded), ``n`` the text's tokens, ``L`` layers, ``d`` hidden size (the second term: attention scores and
weighted sum, forward + backward). MFU = FLOPs / seconds / (the card's dense bf16 peak x GPUs used).

Usage (GPU box, see docs/benchmarks.md)::

    python bench/train_speed.py --data ../shared/data/arguana --batch-sizes 32,128 --variants st,ours
    python bench/train_speed.py --data ../shared/data/arguana --rows 256 --device cpu --variants st,ours  # smoke
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train_quality import emit_row  # noqa: E402

from embedforge import contracts  # noqa: E402
from embedforge.config import TrainConfig  # noqa: E402

log = logging.getLogger("train_speed")

#: Dense bf16 peak FLOP/s by card name (NVIDIA data sheets, without sparsity).
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12)]

#: variant -> embedforge TrainConfig overrides (``st`` is the sentence-transformers trainer).
VARIANTS: dict[str, dict] = {
    "st": {},
    "ours": {},
    "ours_mb4096": {"micro_batch_tokens": 4096},
    "ours_mb32k": {"micro_batch_tokens": 32768},
    "ours_mb128k": {"micro_batch_tokens": 131072},
    "ours_mb1m": {"micro_batch_tokens": 1 << 20},
    "ours_compile": {"compile": True},
    "ours_compile_mb128k": {"compile": True, "micro_batch_tokens": 131072},
    "ours_1proc": {"processes": 1},
    "ours_2proc": {"processes": 2},
    "ours_4proc": {"processes": 4},
    "ours_cached": {"cached": True},
    "ours_ckpt": {"gradient_checkpointing": True},
    "ours_bf16w": {"weights_dtype": "bf16"},
    "ours_cached_ckpt_bf16w": {"cached": True, "gradient_checkpointing": True, "weights_dtype": "bf16"},
    "ours_lora": {"lora": {"enabled": True}, "learning_rate": 2e-4},
    "ours_fsdp": {"processes": 2, "sharding": "fsdp"},
}


def build_rows(data: Path, n_rows: int, seed: int, negatives: int = 4) -> list[dict[str, str]]:
    """Rows from ``data/corpus.jsonl``: one sentence of a document -> the document, plus random other documents."""
    rng = np.random.default_rng(seed)
    docs = [obj["text"] for _, obj in contracts.iter_jsonl(data / "corpus.jsonl") if len(obj.get("text", "")) > 80]
    rows = []
    for i in rng.permutation(len(docs))[:n_rows]:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", docs[i]) if len(s.split()) >= 4] or [docs[i][:200]]
        row = {"anchor": sentences[int(rng.integers(len(sentences)))], "positive": docs[i]}
        others = rng.choice(len(docs), size=negatives + 1, replace=False)
        row.update({f"negative_{k + 1}": docs[j] for k, j in enumerate([j for j in others if j != i][:negatives])})
        rows.append(row)
    return rows


def useful_flops(model, rows: list[dict[str, str]]) -> tuple[float, int]:
    """Model FLOPs of one training pass over ``rows`` (forward + backward, no padding) and the token count."""
    tok, cap = model.tokenizer, model.max_seq_length
    texts = [t for r in rows for t in r.values()]
    n = np.array([len(ids) for ids in tok(texts, truncation=True, max_length=cap)["input_ids"]], dtype=np.float64)
    enc = model[0].auto_model
    cfg = enc.config
    matmul = sum(p.numel() for name, p in enc.named_parameters()
                 if p.ndim == 2 and "embeddings" not in name and "pooler" not in name)
    flops = float((6 * matmul * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * n**2).sum())
    return flops, int(n.sum())


def peak_flops(device: str) -> tuple[str, float | None]:
    import torch

    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


def run_st(rows: list[dict], base_model: str, batch_size: int, out: Path, device: str, seed: int) -> None:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(base_model, device=device)
    model.max_seq_length = 256
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st_tmp"), num_train_epochs=1, per_device_train_batch_size=batch_size,
        learning_rate=2e-5, warmup_steps=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        bf16=device.startswith("cuda"), save_strategy="no", report_to="none", seed=seed, logging_steps=10_000,
    )
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss).train()
    model.save(str(out / "st_model"))


def run_ours(rows: list[dict], base_model: str, batch_size: int, out: Path, device: str, seed: int,
             overrides: dict) -> dict:
    from embedforge import train

    mined = out / "mined"
    contracts.write_jsonl(mined / contracts.TRAIN_FILE, rows)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, learning_rate=2e-5, max_seq_length=256, seed=seed,
                      device=device, base_weight=0.0, **overrides)
    m = train.launch(mined, out / "ours_model", cfg, base_model=base_model)
    return {"loop_seconds": m.model_extra["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "arguana")
    ap.add_argument("--base-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--variants", default="st,ours", help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.encode import pick_device, resolve_model_path

    device = pick_device(args.device)
    base = resolve_model_path(args.base_model)
    rows = build_rows(args.data, args.rows, args.seed)
    probe = SentenceTransformer(base, device="cpu")
    probe.max_seq_length = 256
    flops, tokens = useful_flops(probe, rows)
    card, peak = peak_flops(device)
    log.info("%d rows, %d texts, %d tokens, %.3g FLOPs per epoch; %s (peak %s)", len(rows), 6 * len(rows), tokens,
             flops, card, peak)

    def once(variant: str, batch_size: int, subset: list[dict]) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            extra = (run_st(subset, base, batch_size, Path(tmp), device, args.seed) if variant == "st" else
                     run_ours(subset, base, batch_size, Path(tmp), device, args.seed, VARIANTS[variant]))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        return {"seconds": seconds, "peak_mem_gib": mem, **(extra or {})}

    variants = args.variants.split(",")
    gpus = {v: VARIANTS[v].get("processes", 1) for v in variants}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        for v in variants:  # warm-up: CUDA context, cuBLAS handles, allocator
            once(v, bs, rows[: 4 * bs])
        for v in variants:
            r = once(v, bs, rows)
            row = {"variant": v, "batch_size": bs, "rows": len(rows), "tokens": tokens,
                   "seconds": round(r["seconds"], 2), "rows_per_s": round(len(rows) / r["seconds"], 1),
                   "tokens_per_s": round(tokens / r["seconds"]),
                   "tflops": round(flops / r["seconds"] / 1e12, 2),
                   "mfu": round(flops / r["seconds"] / (peak * gpus[v]), 4) if peak else None, "gpus": gpus[v],
                   "peak_mem_gib": round(r["peak_mem_gib"], 2) if r["peak_mem_gib"] is not None else None,
                   "loop_seconds": r.get("loop_seconds"), "card": card, "date": time.strftime("%Y-%m-%d"),
                   "torch": torch.__version__}
            emit_row(row, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

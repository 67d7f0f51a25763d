"""Training throughput and MFU: embedforge's train loop against ``SentenceTransformerTrainer`` on the same rows.

Not a test. Both trainers get the same ``(anchor, positive, negative_1..4)`` rows built from a BEIR corpus (anchor:
one sentence of a document; positive: the document; negatives: four other documents, seeded), the same model
folder, batch size, ``max_seq_length`` (256), bf16 autocast on CUDA, one epoch. Each is timed end to end (load the
model, train, save) and by its own training loop (``loop_*`` columns: ST's ``train_runtime``, our ``train_seconds``;
the headline, since load/save of a 1B folder says nothing about the loop), after a short warm-up run of both in the
same process, so CUDA/cuBLAS start-up is paid by neither.

``--shape`` picks the model: ``minilm`` is the bundled all-MiniLM-L6-v2 (real weights); the others are random-init
weights of a published architecture (:data:`SHAPES`: BERT-base, Llama-3.2-1B, Qwen3-0.6B, and tiny ones for CPU
smoke runs) with the bundled MiniLM tokenizer (vocab 30522, so nothing comes from a hub), written once to a temp
folder as a sentence-transformers folder (Transformer + Pooling + Normalize) that both trainers load.

Useful work is counted the same way for both, from the tokenised texts (no padding):
``FLOPs = sum over texts of (6 x P x n + 12 x L x a x n^2)`` — ``P`` the weights of the encoder's ``nn.Linear``
layers (counted on the real model, so grouped-query k/v projections count at their real, smaller size; embeddings
and BERT's unused pooler excluded), ``n`` the text's tokens, ``L`` layers, ``a`` = heads x head dim (the second
term: attention scores and weighted sum, forward + backward, full n x n also for causal models, as PaLM/Megatron
count). MFU = FLOPs / seconds / (peak x GPUs), against two peaks: the card's data-sheet dense bf16 peak
(``mfu``) and a measured bf16 matmul peak (``mfu_matmul``; ``--peak``: a number in TFLOP/s, default 790 measured
on an H200, or ``measure`` to time large bf16 matmuls on this card first).

Usage (GPU box, see docs/benchmarks.md)::

    python bench/train_speed.py --shape bert-base --batch-sizes 32,128 --variants st,ours --json runs/speed.jsonl
    python bench/train_speed.py --shape llama-1b --batch-sizes 128 --variants st_cached,ours_cached --rows 512
    python bench/train_speed.py --table runs/speed.jsonl        # side-by-side markdown table of the JSON rows
    python bench/train_speed.py --shape tiny-llama --rows 16 --max-seq-length 32 --device cpu --batch-sizes 4  # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
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
#: Measured bf16 matmul peak of an H200 (TFLOP/s, large square matmuls), the default ``--peak``.
MEASURED_MATMUL_TFLOPS = 790.0

#: shape -> (transformers model type, config fields, pooling mode); ``minilm`` is the bundled model itself.
SHAPES: dict[str, tuple[str, dict, str] | None] = {
    "minilm": None,
    # all-MiniLM-L6-v2's architecture with random weights: its speed, where the real weights cannot travel
    "minilm-shape": ("bert", {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                              "intermediate_size": 1536, "max_position_embeddings": 512}, "mean"),
    "bert-base": ("bert", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                           "intermediate_size": 3072, "max_position_embeddings": 512}, "mean"),
    "llama-1b": ("llama", {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                           "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192,
                           "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                           "max_position_embeddings": 8192}, "lasttoken"),
    "qwen-0.6b": ("qwen3", {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
                            "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                            "max_position_embeddings": 8192}, "lasttoken"),
    "tiny-bert": ("bert", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 128, "max_position_embeddings": 512}, "mean"),
    "tiny-llama": ("llama", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "intermediate_size": 128, "tie_word_embeddings": True,
                             "max_position_embeddings": 512}, "lasttoken"),
}

#: variant -> embedforge TrainConfig overrides (``st``/``st_cached``: the sentence-transformers trainer with
#: MultipleNegativesRankingLoss / CachedMultipleNegativesRankingLoss).
VARIANTS: dict[str, dict] = {
    "st": {},
    "st_cached": {},
    "ours": {},
    "ours_pack": {"packing": "on"},
    "ours_nopack": {"packing": "off"},
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
    "ours_liger": {"kernels": "auto"},
    "ours_cached_liger": {"cached": True, "kernels": "auto"},
    "ours_ckpt": {"gradient_checkpointing": True},
    "ours_bf16w": {"weights_dtype": "bf16"},
    "ours_cached_ckpt_bf16w": {"cached": True, "gradient_checkpointing": True, "weights_dtype": "bf16"},
    "ours_lora": {"lora": {"enabled": True}, "learning_rate": 2e-4},
    "ours_cached_c32k": {"cached": True, "cache_chunk_tokens": 32768},
    "ours_fsdp": {"processes": 2, "sharding": "fsdp"},
}


def shape_folder(shape: str, root: Path, max_seq_length: int, device: str) -> str:
    """The sentence-transformers folder of ``shape``: the bundled MiniLM, or random-init weights (seed 0, fp32)
    of the shape's architecture with MiniLM's tokenizer, saved under ``root`` as Transformer + Pooling +
    Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from embedforge.retrieval.encode import resolve_model_path

    minilm = resolve_model_path("all-MiniLM-L6-v2")
    if SHAPES[shape] is None:
        return minilm
    model_type, dims, pooling = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(minilm)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, **dims)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B weights on the GPU takes a second, on the CPU a minute
        hf = AutoModel.from_config(cfg, dtype=torch.float32)
    hf_dir, st_dir = root / f"{shape}_hf", root / shape
    hf.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    del hf
    body = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    st = SentenceTransformer(modules=[body, Pooling(cfg.hidden_size, pooling), Normalize()],
                             device="cpu")
    st.save(str(st_dir))
    log.info("%s: random-init %s (%s pooling) in %s", shape, model_type, pooling, st_dir)
    return str(st_dir)


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


def forward_flops(model, lengths: np.ndarray) -> float:
    """Model FLOPs of one forward pass over texts of ``lengths`` tokens (no padding): ``2 x P x n`` for the
    encoder's linear weights ``P`` (the pooler's not used) plus ``4 x L x a x n^2`` for attention (``a`` heads x
    head dim, ``L`` layers). A training pass (forward + backward) is three times that."""
    import torch

    enc = model[0].auto_model
    cfg = enc.config
    matmul = sum(m.weight.numel() for name, m in enc.named_modules()
                 if isinstance(m, torch.nn.Linear) and "pooler" not in name)
    heads = cfg.num_attention_heads
    attn_width = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    n = np.asarray(lengths, dtype=np.float64)
    return float((2 * matmul * n + 4 * cfg.num_hidden_layers * attn_width * n**2).sum())


def useful_flops(model, rows: list[dict[str, str]]) -> tuple[float, int]:
    """Model FLOPs of one training pass over ``rows`` (forward + backward, no padding) and the token count."""
    tok, cap = model.tokenizer, model.max_seq_length
    texts = [t for r in rows for t in r.values()]
    n = np.array([len(ids) for ids in tok(texts, truncation=True, max_length=cap)["input_ids"]], dtype=np.float64)
    return 3 * forward_flops(model, n), int(n.sum())


def peak_flops(device: str, peak: str) -> tuple[str, float | None, float | None]:
    """(card name, data-sheet bf16 peak, measured matmul peak) in FLOP/s; Nones on a CPU."""
    import torch

    if not device.startswith("cuda"):
        return "cpu", None, None
    name = torch.cuda.get_device_name(torch.device(device))
    sheet = next((p for key, p in PEAK_BF16 if key in name), None)
    return name, sheet, (measure_matmul_peak(device) if peak == "measure" else float(peak) * 1e12)


def measure_matmul_peak(device: str, size: int = 8192, reps: int = 50) -> float:
    """Best bf16 FLOP/s of ``size``-cubed matmuls on ``device`` (what the card sustains on ideal GEMMs)."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t0))
    log.info("measured bf16 matmul peak: %.0f TFLOP/s", best / 1e12)
    return best


def run_st(rows: list[dict], base_model: str, batch_size: int, out: Path, device: str, seed: int,
           max_seq_length: int, mini_batch_size: int | None) -> dict:
    """One epoch of ``SentenceTransformerTrainer`` (MNRL, or CachedMNRL with ``mini_batch_size``)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    model = SentenceTransformer(base_model, device=device)
    model.max_seq_length = max_seq_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st_tmp"), num_train_epochs=1, per_device_train_batch_size=batch_size,
        learning_rate=2e-5, warmup_steps=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        bf16=device.startswith("cuda"), save_strategy="no", report_to="none", seed=seed, logging_steps=10_000,
    )
    loss = (CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=mini_batch_size)
            if mini_batch_size else MultipleNegativesRankingLoss(model, scale=20.0))
    result = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                        loss=loss).train()
    model.save(str(out / "st_model"))
    return {"loop_seconds": result.metrics["train_runtime"]}


def run_ours(rows: list[dict], base_model: str, batch_size: int, out: Path, device: str, seed: int,
             max_seq_length: int, overrides: dict) -> dict:
    from embedforge.stages import train

    mined = out / "mined"
    contracts.write_jsonl(mined / contracts.TRAIN_FILE, rows)
    settings = {"epochs": 1, "batch_size": batch_size, "learning_rate": 2e-5, "max_seq_length": max_seq_length,
                "seed": seed, "device": device, "base_weight": 0.0}
    cfg = TrainConfig(**{**settings, **overrides})  # a variant may override any of these (e.g. LoRA's rate)
    m = train.run(mined, out / "ours_model", cfg, base_model=base_model)
    return {"loop_seconds": m.result.train_seconds}


def side_by_side(json_path: Path) -> str:
    """Markdown table of the JSON rows: one line per (shape, batch, variant), in file order."""
    rows = [json.loads(line) for line in json_path.read_text().splitlines() if line.strip()]
    head = ("| shape | batch | variant | loop tok/s | MFU data-sheet | MFU matmul | peak GiB | end-to-end s |\n"
            "|---|---|---|---|---|---|---|---|")

    def pct(v: float | None) -> str:
        return f"{100 * v:.1f} %" if v is not None else "-"

    lines = [f"| {r.get('shape', '?')} | {r['batch_size']} | {r['variant']} | {r['loop_tokens_per_s']:,} | "
             f"{pct(r.get('mfu'))} | {pct(r.get('mfu_matmul'))} | {r.get('peak_mem_gib') or '-'} | {r['seconds']} |"
             for r in rows]
    return "\n".join([head, *lines])


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """``--data`` (a BEIR folder: ``shared/data/arguana`` in or beside the checkout), ``--shape``/``--base-model``
    and ``--max-seq-length``: what this bench and ``train_profile.py`` train on."""
    here = [REPO / "shared" / "data" / "arguana", REPO.parent / "shared" / "data" / "arguana"]
    ap.add_argument("--data", type=Path, default=next((p for p in here if p.is_dir()), here[-1]))
    ap.add_argument("--shape", default="minilm", choices=sorted(SHAPES))
    ap.add_argument("--base-model", default=None, help="a sentence-transformers folder instead of --shape")
    ap.add_argument("--max-seq-length", type=int, default=256)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--variants", default="st,ours", help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--mini-batch-size", type=int, default=32, help="st_cached: CachedMNRL's mini_batch_size")
    ap.add_argument("--runs", default=None, help="variant@batch list, e.g. st@32,ours@32,st_cached@128 (instead "
                    "of --variants x --batch-sizes)")
    ap.add_argument("--warmup-rows", type=int, default=None, help="rows of the warm-up run of each variant "
                    "(default 2 batches; 0: none)")
    ap.add_argument("--peak", default=str(MEASURED_MATMUL_TFLOPS),
                    help="measured bf16 matmul peak in TFLOP/s for mfu_matmul, or 'measure' (time it here)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    ap.add_argument("--table", type=Path, default=None, help="only print the markdown table of this JSON file")
    args = ap.parse_args(argv)
    if args.table:
        print(side_by_side(args.table))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.retrieval.encode import pick_device, resolve_model_path

    device = pick_device(args.device)
    rows = build_rows(args.data, args.rows, args.seed)
    card, sheet, matmul_peak = peak_flops(device, args.peak)
    with tempfile.TemporaryDirectory() as models:
        base = (resolve_model_path(args.base_model) if args.base_model else
                shape_folder(args.shape, Path(models), args.max_seq_length, device))
        probe = SentenceTransformer(base, device="cpu")
        probe.max_seq_length = args.max_seq_length
        flops, tokens = useful_flops(probe, rows)
        del probe
        log.info("%s: %d rows, %d texts, %d tokens, %.3g FLOPs per epoch; %s, MFU vs data-sheet %s and measured "
                 "matmul peak %s FLOP/s (--peak %s)", args.shape, len(rows), 6 * len(rows), tokens, flops, card,
                 sheet, matmul_peak, args.peak)

        def once(variant: str, batch_size: int, subset: list[dict]) -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                if variant.startswith("st"):
                    extra = run_st(subset, base, batch_size, Path(tmp), device, args.seed, args.max_seq_length,
                                   args.mini_batch_size if variant == "st_cached" else None)
                else:
                    extra = run_ours(subset, base, batch_size, Path(tmp), device, args.seed, args.max_seq_length,
                                     VARIANTS[variant])
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
            gc.collect()  # the trainers' reference cycles hold the model: free it before the next variant
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            return {"seconds": seconds, "peak_mem_gib": mem, **extra}

        runs = ([(item.split("@")[0], int(item.split("@")[1])) for item in args.runs.split(",")] if args.runs else
                [(v, int(b)) for b in args.batch_sizes.split(",") for v in args.variants.split(",")])
        unknown = sorted({v for v, _ in runs if v not in VARIANTS})
        if unknown:
            ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
        gpus = {v: VARIANTS[v].get("processes", 1) for v, _ in runs}
        warmed: set[str] = set()
        for v, bs in runs:
            warm = args.warmup_rows if args.warmup_rows is not None else 2 * bs
            if warm and v not in warmed:  # warm-up, once per variant: CUDA context, cuBLAS handles, allocator
                once(v, bs, rows[:warm])
                warmed.add(v)
            r = once(v, bs, rows)
            loop = r["loop_seconds"]

            def mfu(peak: float | None, seconds: float, v: str = v) -> float | None:
                return round(flops / seconds / (peak * gpus[v]), 4) if peak else None

            row = {"shape": args.base_model or args.shape, "variant": v, "batch_size": bs, "rows": len(rows),
                   "max_seq_length": args.max_seq_length, "tokens": tokens,
                   "mini_batch_size": args.mini_batch_size if v == "st_cached" else None,
                   "seconds": round(r["seconds"], 2), "tokens_per_s": round(tokens / r["seconds"]),
                   "loop_seconds": round(loop, 2), "loop_tokens_per_s": round(tokens / loop),
                   "rows_per_s": round(len(rows) / loop, 1), "tflops": round(flops / loop / 1e12, 2),
                   "mfu": mfu(sheet, loop), "mfu_matmul": mfu(matmul_peak, loop),
                   "peak_datasheet_tflops": sheet and sheet / 1e12,
                   "peak_matmul_tflops": matmul_peak and round(matmul_peak / 1e12, 1), "gpus": gpus[v],
                   "peak_mem_gib": round(r["peak_mem_gib"], 2) if r["peak_mem_gib"] is not None else None,
                   "card": card, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
            emit_row(row, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

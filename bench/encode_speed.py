"""Encoding speed: embedforge's token-budget encoder against ``SentenceTransformer.encode`` on the same texts.

Not a test. Texts are a BEIR collection's documents and queries together (``--data``, default arguana: long
arguments and short claims, the length spread mining and evaluation see), capped at ``--max-seq-length``. Both
encoders get the same model object with bf16 weights on CUDA (fp32 on a CPU), the same prompt-less texts, the same
maximum length; each is run once to warm up, then timed (CUDA synchronised). ``st@B`` is
``SentenceTransformer.encode(batch_size=B)`` (it sorts by length itself); ``ours@T`` is
:func:`embedforge.retrieval.encode.encode_token_batched` with a budget of ``T`` padded tokens a batch.

Reported per variant: texts/s, real (unpadded) tokens/s, the ratio to ``st@32`` (sentence-transformers'
default batch size) and to the best ``st`` row, forward-pass MFU against the card's data-sheet dense bf16 peak
(``2 x P x n + 4 x L x a x n^2`` FLOPs per text of ``n`` tokens; ``P`` the encoder's linear weights, ``a`` heads x
head dim), and the lowest cosine between its embeddings and ``st@32``'s (agreement, not just speed).

CPU mode (``--cpu``): the real model (``--base-model``, default the bundled all-MiniLM-L6-v2) on this machine's
cores, ``st@B`` against :func:`embedforge.retrieval.encode.encode` through ONNX Runtime (``onnx-fp32@B``,
``onnx-int8@B``: the graph exported once into a scratch cache, its export time reported apart and not timed), each
warmed up on a few texts, then timed ``--rounds`` times on all of them, the variants interleaved (median kept;
rows carry the load average around each timing: the machine may be shared). ``--ndcg NAME[,NAME]`` also evaluates each path on those dev collections
(``<data>/../NAME``, BEIR layout, the evaluate stage's protocol) and reports nDCG@10 and its change against
PyTorch's: the measurement behind ``encode.int8``'s default.

Usage (GPU box; ``--shape`` as in bench/train_speed.py)::

    python bench/encode_speed.py --shape minilm --texts 40000 --json runs/encode.jsonl
    python bench/encode_speed.py --shape llama-1b --texts 8000 --st-batch-sizes 32,128 --budgets 32768,131072
    python bench/encode_speed.py --shape tiny-bert --texts 200 --device cpu      # smoke
    python bench/encode_speed.py --cpu --texts 1000 --ndcg cranfield --json bench/results/encode-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train_speed import PEAK_BF16, add_model_args, forward_flops, shape_folder  # noqa: E402

from embedforge import contracts  # noqa: E402

log = logging.getLogger("encode_speed")


def load_texts(data: Path, n: int, seed: int) -> list[str]:
    """``n`` texts drawn from the collection's documents and queries together (seeded)."""
    docs = [(o.get("title", "") + " " + o.get("text", "")).strip() for _, o in contracts.iter_jsonl(data / "corpus.jsonl")]
    queries = [o.get("text", "") for _, o in contracts.iter_jsonl(data / "queries.jsonl")]
    pool = [t for t in docs + queries if t]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def timed(fn, device: str) -> tuple[np.ndarray, float]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--st-batch-sizes", default="32,128")
    ap.add_argument("--budgets", default="16384,65536,262144", help="token budgets of our encoder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per variant here")
    ap.add_argument("--cpu", action="store_true", help="CPU mode: st vs ONNX Runtime fp32/int8 (see above)")
    ap.add_argument("--batch-size", type=int, default=32, help="CPU mode: texts per batch of every variant")
    ap.add_argument("--rounds", type=int, default=3, help="CPU mode: timed runs of each variant (median kept)")
    ap.add_argument("--ndcg", default="", help="CPU mode: dev collections beside --data to compare nDCG@10 on")
    ap.add_argument("--ndcg-paths", default="st,onnx-fp32,onnx-int8", help="CPU mode: the paths --ndcg evaluates "
                    "(changes are against the first)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cpu:
        return cpu_main(args)
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.retrieval.encode import encode_token_batched, pick_device

    device = pick_device(args.device)
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = next((p for key, p in PEAK_BF16 if key in card), None)
    texts = load_texts(args.data, args.texts, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.base_model or shape_folder(args.shape, Path(tmp), args.max_seq_length, device)
        model = SentenceTransformer(folder, device=device)
    model.max_seq_length = args.max_seq_length
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    lengths = np.array([len(x) for x in model.tokenizer(texts, truncation=True, max_length=args.max_seq_length)["input_ids"]])
    flops = forward_flops(model, lengths)
    variants = [(f"st@{b}", lambda b=int(b): model.encode(texts, batch_size=b, convert_to_numpy=True,
                                                        normalize_embeddings=True, show_progress_bar=False))
                for b in args.st_batch_sizes.split(",")]
    variants += [(f"ours@{t}", lambda t=int(t): encode_token_batched(model, texts, "document", t))
                 for t in args.budgets.split(",")]
    rows, ref = [], None
    for name, fn in variants:
        fn()  # warm-up: kernels, allocator
        emb, seconds = timed(fn, device)
        emb = np.asarray(emb, dtype=np.float32)
        ref = emb if ref is None else ref
        row = {"bench": "encode_speed", "date": time.strftime("%Y-%m-%d"), "card": card, "shape": args.shape,
               "variant": name, "texts": len(texts), "tokens": int(lengths.sum()),
               "mean_tokens": round(float(lengths.mean()), 1), "max_seq_length": args.max_seq_length,
               "seconds": round(seconds, 3), "texts_per_s": round(len(texts) / seconds, 1),
               "tokens_per_s": round(float(lengths.sum()) / seconds, 1),
               "mfu": round(flops / seconds / peak, 4) if peak else None,
               "min_cosine_vs_first": round(float((emb * ref).sum(1).min()), 5)}
        rows.append(row)
        log.info("%s", row)
    st_default = rows[0]["texts_per_s"]
    best_st = max(r["texts_per_s"] for r in rows if r["variant"].startswith("st@"))
    for r in rows:
        r["vs_st_default"] = round(r["texts_per_s"] / st_default, 2)
        r["vs_best_st"] = round(r["texts_per_s"] / best_st, 2)
    print(f"| card | shape | variant | texts/s | tokens/s | MFU | × st@{args.st_batch_sizes.split(',')[0]} | × best st | min cos |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['card']} | {r['shape']} | {r['variant']} | {r['texts_per_s']:.0f} | {r['tokens_per_s']:.0f} | "
              f"{r['mfu'] if r['mfu'] is not None else '-'} | {r['vs_st_default']} | {r['vs_best_st']} | {r['min_cosine_vs_first']} |")
    _write(rows, args.json)
    return 0


def _write(rows: list[dict], path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")


def cpu_main(args: argparse.Namespace) -> int:
    """CPU mode: texts/s of st@B and of our encoder through ONNX Runtime (fp32, int8), and optionally nDCG@10."""
    import os
    import platform

    import torch

    from embedforge.config import EncodeConfig, EvaluateConfig
    from embedforge.retrieval.beir import evaluate_beir_folder, load_beir_folder
    from embedforge.retrieval.encode import encode, load_model
    from embedforge.retrieval.onnx_encoder import available_cores

    model = load_model(args.base_model or "all-MiniLM-L6-v2", device="cpu")
    model.max_seq_length = args.max_seq_length
    texts = load_texts(args.data, args.texts, args.seed)
    lengths = np.array([len(x) for x in model.tokenizer(texts, truncation=True, max_length=args.max_seq_length)["input_ids"]]) if texts else np.zeros(1)
    machine = {"cpu": platform.processor() or platform.machine(), "cores_available": available_cores(),
               "torch_threads": torch.get_num_threads()}
    bs = args.batch_size
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {f"st@{bs}": None, f"onnx-fp32@{bs}": EncodeConfig(encoder="onnx", cache_dir=tmp),
                 f"onnx-int8@{bs}": EncodeConfig(encoder="onnx", int8=True, cache_dir=tmp)}

        def run(name: str, items: list[str]) -> np.ndarray:
            if paths[name] is None:
                return model.encode(items, batch_size=bs, convert_to_numpy=True, normalize_embeddings=True,
                                    show_progress_bar=False)
            return encode(model, items, "document", batch_size=bs, encoder=paths[name])

        prepare: dict[str, float] = {}
        for name in paths if texts else ():  # --texts 0: nDCG only
            t0 = time.perf_counter()
            run(name, texts[:16])  # warm-up; for ONNX Runtime also the one-time export (and quantisation)
            prepare[name] = time.perf_counter() - t0
        timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
        embs: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):  # variants interleaved, so a load spike of the shared machine hits all alike
            for name in paths:
                load_before = os.getloadavg()[0]
                emb, seconds = timed(lambda n=name: run(n, texts), "cpu")
                embs[name] = np.asarray(emb, dtype=np.float32)
                timings[name].append((seconds, load_before, os.getloadavg()[0]))
        for name in paths if texts else ():
            secs = sorted(t[0] for t in timings[name])
            seconds = secs[len(secs) // 2]
            emb, ref = embs[name], embs[f"st@{bs}"]
            row = {"bench": "encode_speed_cpu", "date": time.strftime("%Y-%m-%d"), **machine,
                   "variant": name, "texts": len(texts), "tokens": int(lengths.sum()),
                   "mean_tokens": round(float(lengths.mean()), 1), "max_seq_length": args.max_seq_length,
                   "rounds": args.rounds, "seconds": round(seconds, 3), "all_seconds": [round(x, 2) for x in secs],
                   "texts_per_s": round(len(texts) / seconds, 2),
                   "tokens_per_s": round(float(lengths.sum()) / seconds, 1), "prepare_s": round(prepare[name], 2),
                   "load_1min": [round(x, 2) for t in timings[name] for x in t[1:]],
                   "min_cosine_vs_st": round(float((emb * ref).sum(1).min()), 5),
                   "mean_cosine_vs_st": round(float((emb * ref).sum(1).mean()), 5)}
            rows.append(row)
            log.info("%s", row)
        for r in rows:
            r["vs_st"] = round(r["texts_per_s"] / rows[0]["texts_per_s"], 2)
        quality: list[dict] = []
        for coll_name in [c for c in args.ndcg.split(",") if c]:
            coll = load_beir_folder(args.data.parent / coll_name)
            base = None
            wanted = args.ndcg_paths.split(",")
            for name, enc in sorted(((n, e) for n, e in paths.items() if n.split("@")[0] in wanted),
                                    key=lambda item: wanted.index(item[0].split("@")[0])):
                cfg = EvaluateConfig(batch_size=bs, encode=enc or EncodeConfig(encoder="torch"))
                t0 = time.perf_counter()
                metrics = evaluate_beir_folder(model, coll, cfg)
                base = metrics if base is None else base
                quality.append({"bench": "encode_ndcg_cpu", "date": time.strftime("%Y-%m-%d"), **machine,
                                "collection": coll_name, "variant": name, "docs": len(coll.corpus),
                                "queries": len(coll.qrels), "ndcg@10": round(metrics["ndcg@10"], 5),
                                f"delta_vs_{wanted[0]}": round(metrics["ndcg@10"] - base["ndcg@10"], 5),
                                "recall@100": round(metrics["recall@100"], 5),
                                "seconds": round(time.perf_counter() - t0, 1)})
                log.info("%s", quality[-1])
    print("| variant | texts/s | tokens/s | x st | min cos vs st | mean cos | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['vs_st']} | "
              f"{r['min_cosine_vs_st']} | {r['mean_cosine_vs_st']} | {min(r['load_1min'])}-{max(r['load_1min'])} |")
    if quality:
        print(f"\n| collection | variant | nDCG@10 | change vs {args.ndcg_paths.split(',')[0]} | recall@100 | seconds |")
        print("|---|---|---|---|---|---|")
        for q in quality:
            print(f"| {q['collection']} | {q['variant']} | {q['ndcg@10']:.4f} | "
                  f"{next(v for k, v in q.items() if k.startswith('delta_vs_')):+.4f} | "
                  f"{q['recall@100']:.4f} | {q['seconds']} |".replace("+-", "-"))
    _write(rows + quality, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

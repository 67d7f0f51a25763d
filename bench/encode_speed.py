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

Usage (GPU box; ``--shape`` as in bench/train_speed.py)::

    python bench/encode_speed.py --shape minilm --texts 40000 --json runs/encode.jsonl
    python bench/encode_speed.py --shape llama-1b --texts 8000 --st-batch-sizes 32,128 --budgets 32768,131072
    python bench/encode_speed.py --shape tiny-bert --texts 200 --device cpu      # smoke
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

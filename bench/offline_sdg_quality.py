"""Does training on the offline generator's pairs help or hurt retrieval on human queries? (not a test)

For each BEIR folder: ``ingest`` the corpus with the pipeline defaults (80/20 document split), generate pairs with
the offline generator (variant settings), ``mine`` + ``train`` with the variant's profile, then score base and
fine-tuned models on the folder's human test queries with the pipeline's own external evaluation
(:func:`embedforge.stages.evaluate.evaluate_beir_folder`: whole documents, exact search, identical texts removed).
The human queries never touch generation or training — this measures what the offline generator is worth.

Variants (``sdg`` / ``mine`` / ``train`` overrides, every knob explicit), each under profile ``cpu`` (<= 400
pairs, 1 epoch, batch 16) and/or ``gpu`` (all pairs, 3 epochs, batch 32):

* ``v1``: the first generator: titles kept inside their positives, 90 % of ICT sentences removed, 4 mined hard
  negatives, no filter;
* ``strip``: title removed from the title query's positive where the document repeats it;
* ``strip_r1``: + every ICT sentence removed from its positive;
* ``..._c<k>``: + round-trip consistency filter (``mine.offline_consistency_rank=k``);
* ``..._neg0``: no mined hard negatives (``mine.offline_num_negatives=0``: in-batch negatives only);
* ``..._wise5``: WiSE-FT, saved weights halfway back to the base model (``train.base_weight=0.5``);
* ``defaults``: as shipped.

Usage (GPU box without faiss: exact NumPy search stands in, identical results)::

    HF_HUB_OFFLINE=1 python bench/offline_sdg_quality.py --data ../shared/data/cranfield ../shared/data/arguana \\
        --variants v1,strip_r1,strip_r1_c10 --profiles cpu,gpu --json runs/offline_sdg.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from train_quality import emit_row  # noqa: E402

from embedforge.config import (  # noqa: E402
    CPU_PROFILE,
    EvaluateConfig,
    IngestConfig,
    MineConfig,
    PromptsConfig,
    SdgConfig,
    TrainConfig,
)

log = logging.getLogger("offline_sdg_quality")

def _variant(strip: bool = True, remove: float = 1.0, negatives: int = 4, consistency: int = 0,
             base_weight: float = 0.0, **extra: dict) -> dict:
    """Every knob explicit, so a variant keeps its meaning when the shipped defaults change."""
    v = {"sdg": {"title_strip": strip, "ict_remove_prob": remove},
         "mine": {"offline_num_negatives": negatives, "offline_consistency_rank": consistency},
         "train": {"base_weight": base_weight}}
    for section, fields in extra.items():
        v[section] = {**v.get(section, {}), **fields}
    return v


VARIANTS: dict[str, dict] = {
    "v1": _variant(strip=False, remove=0.9),  # the first generator: 4 hard negatives, no filter, no WiSE
    "strip": _variant(remove=0.9),
    "strip_r1": _variant(),
    "strip_r1_c3": _variant(consistency=3),
    "strip_r1_c10": _variant(consistency=10),
    "notitle_r1_c10": _variant(consistency=10, sdg={"title_queries": False}),
    "titleonly": _variant(sdg={"queries_per_chunk": 0}),
    "s_c10_m08": _variant(consistency=10, mine={"margin": 0.8}),
    "s_c10_neg0": _variant(consistency=10, negatives=0),
    "s_c10_wise5": _variant(consistency=10, base_weight=0.5),
    "s_wise5": _variant(base_weight=0.5),
    "s_c10_neg0_wise5": _variant(consistency=10, negatives=0, base_weight=0.5),
    "s_c10_neg0_e1": _variant(consistency=10, negatives=0, train={"epochs": 1}),
    "s_c10_neg0_e1_wise5": _variant(consistency=10, negatives=0, base_weight=0.5, train={"epochs": 1}),
    "defaults": {},  # as shipped: title strip, ICT removal 0.9, no offline negatives, consistency 10, WiSE 0.5
}
PROFILES: dict[str, dict] = {
    # "cpu": the CPU profile when the table in docs/benchmarks.md was measured; "cpu_now": CPU_PROFILE as shipped.
    "cpu": {"sdg": {"max_pairs": 400}, "train": {"epochs": 1.0, "batch_size": 16}},
    "cpu_now": CPU_PROFILE,
    "gpu": {},
    "cpu_lr2e-5": {"sdg": CPU_PROFILE["sdg"], "train": {**CPU_PROFILE["train"], "learning_rate": 2e-5}},
    "cpu_neg2": {"sdg": {"max_pairs": 400}, "train": {"epochs": 1.0, "batch_size": 16}, "mine": {"num_negatives": 2}},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_offline_sdg")
    ap.add_argument("--base-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--variants", default="v1,strip_r1,strip_r1_c10")
    ap.add_argument("--profiles", default="cpu,gpu")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-docs", type=int, default=0, help="use the first N corpus documents only (0 = all)")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("sentence_transformers", "httpx", "embedforge.stages.train"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from embedforge.retrieval.encode import load_model, pick_device
    from embedforge.stages import ingest, mine, sdg, train
    from embedforge.stages.evaluate import evaluate_beir_folder, load_beir_folder

    device = pick_device("auto")
    ecfg = EvaluateConfig()
    rows = []
    for data in args.data:
        work = args.out / data.name
        coll = load_beir_folder(data, "test")
        corpus = data / "corpus.jsonl"
        if args.max_docs:
            corpus = work / "corpus.jsonl"
            work.mkdir(parents=True, exist_ok=True)
            with (data / "corpus.jsonl").open() as fh:
                corpus.write_text("".join(line for _, line in zip(range(args.max_docs), fh)))
        chunks_dir = work / "chunks"
        ingest.run(corpus, chunks_dir, IngestConfig(), base_model=args.base_model)
        base = evaluate_beir_folder(load_model(args.base_model, device), coll, ecfg)
        row = {"data": data.name, "variant": "base", "ndcg@10": round(base["ndcg@10"], 4),
               "recall@100": round(base["recall@100"], 4)}
        emit_row(row, args.json)
        rows.append(row)
        for profile in args.profiles.split(","):
            prof = PROFILES[profile]
            for variant in args.variants.split(","):
                spec = VARIANTS[variant]
                t0 = time.perf_counter()
                tag = work / f"{profile}_{variant}"
                scfg = SdgConfig(**{**prof.get("sdg", {}), **spec.get("sdg", {}), "seed": args.seed})
                sm = sdg.run(chunks_dir, tag / "pairs", scfg, base_model=args.base_model)
                mm = mine.run(chunks_dir, tag / "pairs", tag / "mined", MineConfig(**{**prof.get("mine", {}), **spec.get("mine", {})}),
                              base_model=args.base_model)
                tcfg = TrainConfig(**{**prof.get("train", {}), **spec.get("train", {}), "seed": args.seed,
                                      "device": device})
                tm = train.run(tag / "mined", tag / "model", tcfg, base_model=args.base_model, prompts=PromptsConfig())
                ft = evaluate_beir_folder(load_model(str(tag / "model"), device), coll, ecfg)
                row = {"data": data.name, "profile": profile, "variant": variant,
                       "ndcg@10": round(ft["ndcg@10"], 4), "delta": round(ft["ndcg@10"] - base["ndcg@10"], 4),
                       "recall@100": round(ft["recall@100"], 4), "train_pairs": sm.counts["train_pairs"],
                       "dropped_by_consistency": mm.counts.get("pairs_dropped_by_consistency", 0),
                       "examples": mm.counts["examples"], "steps": tm.counts["steps"],
                       "seconds": round(time.perf_counter() - t0, 1), "device": device}
                emit_row(row, args.json)
                rows.append(row)
    print("\ndata              profile variant          ndcg@10  delta")
    for r in rows:
        print(f"{r['data']:<17} {r.get('profile', '-'):<7} {r['variant']:<16} {r['ndcg@10']:.4f}  {r.get('delta', 0):+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

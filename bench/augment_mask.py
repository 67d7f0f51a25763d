"""How often a user's query met a near-copy of one of its relevant documents as an in-batch negative, with
``sdg.augment`` rows in the batches, before train's false-negative mask knew about rewritten positives.

Augmentation pairs (offline inverse-cloze / title pairs of the corpus, :mod:`embedforge.stages.sdg.augment`) train on a
*rewritten* chunk: the chunk with the query sentence cut out, or the document with its title stripped
(``Pair.positive_text``). Where that chunk belongs to a document a user's query judged relevant, the rewrite is a
near-copy of a relevant text; the mask used to compare texts only, so it was that query's negative. Mine now adds
such rewrites to the query's known positives (:func:`embedforge.stages.train.positives.add_rewrites`). This counts, over a
run's batches (batch 32, 3 epochs, the shipped sampler), the (user query, rewrite) pairs the fix masks. Not a
timed or GPU benchmark: mining embeds the corpus once with the base model (minutes on a CPU).

    python bench/augment_mask.py --data ../shared/data/cranfield --out runs/augment_mask
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import train_quality  # noqa: E402  (its BEIR inputs and augmentation helper)

from embedforge import contracts, mine  # noqa: E402
from embedforge.config import MineConfig, SdgConfig, TrainConfig  # noqa: E402
from embedforge.contracts import Pair  # noqa: E402
from embedforge.contracts.positives import known_positives  # noqa: E402
from embedforge.stages.train.batching import collate, plan_steps  # noqa: E402


def count(data_dir: Path, out: Path, augment: float, base_model: str) -> dict:
    """Mine the collection's train pairs plus ``augment`` x augmentation pairs, then count the mask entries that
    rewritten positives add for the user's queries over the shipped training plan."""
    data = train_quality.build_inputs(data_dir, out)
    folder = train_quality._with_offline_pairs(data, SdgConfig(augment=augment), out)
    rewrites = {p.positive_text for p in contracts.read_records(folder / contracts.PAIRS_FILE, Pair) if p.positive_text}
    mined = out / "mined_augment"
    if not (mined / contracts.MANIFEST).is_file():
        mine.run(data["chunks"], folder, mined, MineConfig(), base_model=base_model)
    rows = contracts.read_train_examples(mined)
    known = known_positives(mined, rows)
    users = {r.anchor for r in rows if not r.augment}
    before = {q: (texts - rewrites if q in users else texts) for q, texts in known.items()}
    cfg = TrainConfig()
    plan = plan_steps(rows, cfg.batch_size, cfg.epochs, cfg.seed, cfg.positives_per_query)
    masked = sum(int(collate(rows, b, known).mask.sum() - collate(rows, b, before).mask.sum()) for b in plan)
    user_rows = sum(not rows[i].augment for b in plan for i in b)
    return {"collection": data_dir.name, "rows": len(rows), "augment_rows": sum(r.augment for r in rows),
            "steps": len(plan), "user_rows_trained": user_rows, "newly_masked": masked,
            "per_100_user_rows": round(100 * masked / max(user_rows, 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True, help="BEIR folders")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "augment_mask")
    ap.add_argument("--augment", type=float, default=1.0)
    ap.add_argument("--base-model", default="all-MiniLM-L6-v2")
    args = ap.parse_args()
    for d in args.data:
        print(json.dumps(count(d, args.out / d.name, args.augment, args.base_model)), flush=True)


if __name__ == "__main__":
    main()

"""Retrieval quality of embedforge's mine + train against a sentence-transformers baseline on a BEIR collection.

Not a test: an experiment used to choose ``TrainConfig``/``MineConfig`` defaults. For a BEIR folder with
``qrels/train.tsv`` and ``qrels/test.tsv`` (e.g. /work/shared/data/cranfield):

* inputs: one chunk per corpus document; one train pair per train query whose positives are its judged documents
  (highest grade first);
* ``base``: the base model, no training;
* ``st_*``: the reference recipe — sentence-transformers ``MultipleNegativesRankingLoss`` (scale 20) on
  (anchor, positive, negative_1..4) rows with 4 naively mined hard negatives (top-4 by base-model cosine, the
  query's judged documents excluded: ``mine_hard_negatives(num_negatives=4, sampling_strategy="top")``),
  no-duplicates batches, 3 epochs, linear decay. Uses ``SentenceTransformerTrainer`` when ``datasets`` is
  installed, else the same loss module in a plain loop;
* ``ours_*``: ``embedforge.stages.mine.run`` + ``embedforge.stages.train.run`` with the variant's settings.

Every model is scored on the test queries over the full corpus with BEIR's ``EvaluateRetrieval.evaluate``
(exact cosine search, ``ignore_identical_ids=False``: Cranfield's query and document ids overlap).

Usage::

    HF_HUB_OFFLINE=1 python bench/train_quality.py --data /work/shared/data/cranfield --out runs/bench \\
        --variants base,st_lr2e-5,defaults --seeds 13,14,15
    HF_HUB_OFFLINE=1 python bench/train_quality.py --data /work/shared/data/arguana --exclude-self \\
        --variants base,st_lr2e-5,defaults --seeds 13,14      # no train qrels: queries split 50/50 by id hash

Results (2026-11-26, one NVIDIA H200, bf16 autocast; all-MiniLM-L6-v2 whose weights travelled as fp16 and were
cast back to fp32 — cosine to the original embeddings 0.9999998; NDCG@10 on the test queries, mean over seeds):

Cranfield (150 train / 75 test queries, 1,052 train judgements, 1,398 docs)

=====================================================================  ======================  ===========
variant                                                                ndcg@10 (seeds)         recall@100
=====================================================================  ======================  ===========
base model                                                             0.3709                  0.804
sentence-transformers MNRL, 4 naive negatives, 3 ep, lr 2e-5, bs 32    0.4084 (13,14,15)       0.813
  same, lr 5e-5                                                        0.4033 (13)             0.790
ours v0: cap 3 positives, margin vs own positive, 1 ep, lr 2e-5        0.3750 (13)             0.818
ours v0 + 3 ep                                                         0.3959 (13)             0.827
ours v0 + 3 ep + all positives                                         0.4037 (13,14,15)       0.833
ours v0 + 3 ep + all positives + margin vs best positive               0.4085 (13,14,15)       0.832
  same, margin off (1.0)                                               0.4076 (13,14,15)       0.821
ours: cap 10, margin vs best positive, 3 ep, lr 5e-5 (= defaults)      0.4105 (13,14,15)       0.840
ours: all positives, margin vs best, 3 ep, lr 5e-5                     0.4116 (13,14,15)       0.827
ours: all positives, margin vs best, 2 ep, lr 5e-5                     0.4134 (13,14,15)       0.829
ours: cap 10, margin vs best, 2 ep, lr 5e-5 / lr 1e-4                  0.4036 / 0.4045 (x3)    0.846/0.839
single-seed probes on v0 + 3 ep: bs 16 0.3973, bs 64 0.3838, T 0.02 0.3887, T 0.1 0.3871, lr 1e-5 0.3826,
8 negatives 0.3985, margin 0.9 0.3928, 1 positive per query 0.3711
=====================================================================  ======================  ===========

ArguAna (697 train / 704 test queries, 1 positive each, 8,567 docs, own id/text removed from rankings)

=====================================================================  ======================  ===========
base model                                                             0.5095                  0.963
sentence-transformers MNRL, 4 naive negatives, 3 ep, lr 2e-5, bs 32    0.6182 (13,14)          0.979
ours v0 (1 ep, lr 2e-5)                                                0.5780 (13,14)          0.978
ours defaults (3 ep, lr 5e-5, bs 32, T 0.05, margin 0.95 vs best)      0.6432 (13,14)          0.982
=====================================================================  ======================  ===========

Reading: the seed-to-seed spread is about +-0.004 on Cranfield's 75 test queries, so only differences beyond
~0.01 there are signal. What carried over to ArguAna: 3 epochs at lr 5e-5 (v0's 1 epoch at 2e-5 under-trains
small sets); batch 32 and temperature 0.05 were at least as good as the alternatives tried. The margin relative
to the query's best positive and a generous positive cap only matter for multi-positive data (Cranfield).
The "ST" rows ran the loss module in a plain loop (no ``datasets`` on the GPU box) with the trainer's defaults:
AdamW without weight decay, linear warm-up (10%)/decay, clip 1.0, bf16, no-duplicates batches.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from embedforge import contracts
from embedforge.config import (
    MineConfig,
    PipelineConfig,
    PromptsConfig,
    SdgConfig,
    TrainConfig,
)
from embedforge.contracts import Chunk, Pair, TrainExample

log = logging.getLogger("train_quality")

COSINE = {"lr_schedule": "cosine", "weight_decay": 0.01}  # the train schedule shipped before 2026-12-02's change

# The settings the grid started from (the first defaults); every "ours_*" variant overrides these, so the table
# stays comparable when the shipped defaults change (their margin and schedule pinned since those defaults moved).
# "defaults" = what `embedforge run --pairs` trains with on this machine: MineConfig()/TrainConfig() as shipped with the
# compute profile of the device applied (PipelineConfig.resolved: the gpu profile's `train.schedule=auto` on CUDA, the
# CPU profile's shorter run without one); "fixed" = MineConfig()/TrainConfig() alone (the fixed schedule). Rows named
# "defaults" in docs/data before 2026-12-04's sixth round (sweep 22) are the fixed schedule's.
V0 = {"mine": {"max_positives_per_pair": 3, "margin_reference": "positive", "margin": 0.95},
      "train": {"epochs": 1, "learning_rate": 2e-5, **COSINE}}

# Variants measured against the defaults of a given day pin them ("shipped": that day), so their rows in docs/data stay
# reproducible after the defaults move; "shipped": True = MineConfig()/TrainConfig() as shipped now.
SHIPPED_ON = {"2026-12-01": {"mine": {"margin": 0.95}, "train": {"learning_rate": 5e-5, **COSINE}},
              "2026-12-02": {"mine": {}, "train": COSINE}}

AUTO_V1 = {"mode": "auto", "folds": 1, "budget": 1.5, "candidates": [[1.0, 1.0], [0.5, 1.0], [1.0, 2.0]]}

# name -> settings. "mine"/"train": MineConfig/TrainConfig overrides; "st": baseline trainer settings.
VARIANTS: dict[str, dict] = {
    "base": {},
    "st_lr2e-5": {"st": {"lr": 2e-5, "batch_size": 32, "epochs": 3, "warmup_ratio": 0.1}},
    "st_lr5e-5": {"st": {"lr": 5e-5, "batch_size": 32, "epochs": 3, "warmup_ratio": 0.1}},
    "ours_v0": {"mine": {}, "train": {}},
    "ours_e3": {"train": {"epochs": 3}},
    "ours_e3_lr5e-5": {"train": {"epochs": 3, "learning_rate": 5e-5}},
    "ours_e2_lr5e-5": {"train": {"epochs": 2, "learning_rate": 5e-5}},
    "ours_e1_lr5e-5": {"train": {"epochs": 1, "learning_rate": 5e-5}},
    "ours_e1_lr1e-4": {"train": {"epochs": 1, "learning_rate": 1e-4}},
    "ours_e3_lr1e-5": {"train": {"epochs": 3, "learning_rate": 1e-5}},
    "ours_e3_bs16": {"train": {"epochs": 3, "batch_size": 16}},
    "ours_e3_bs64": {"train": {"epochs": 3, "batch_size": 64}},
    "ours_e3_t002": {"train": {"epochs": 3, "temperature": 0.02}},
    "ours_e3_t01": {"train": {"epochs": 3, "temperature": 0.1}},
    "ours_e3_pos10": {"mine": {"max_positives_per_pair": 10}, "train": {"epochs": 3}},
    "ours_e3_pos1": {"mine": {"max_positives_per_pair": 1}, "train": {"epochs": 3}},
    "ours_e3_nomargin": {"mine": {"margin": 1.0}, "train": {"epochs": 3}},
    "ours_e3_m09": {"mine": {"margin": 0.9}, "train": {"epochs": 3}},
    "ours_e3_neg8": {"mine": {"num_negatives": 8}, "train": {"epochs": 3}},
    "ours_e3_posall": {"mine": {"max_positives_per_pair": 100}, "train": {"epochs": 3}},
    "ours_e3_posall_best": {"mine": {"max_positives_per_pair": 100, "margin_reference": "best_positive"}, "train": {"epochs": 3}},
    "ours_e3_posall_nomargin": {"mine": {"max_positives_per_pair": 100, "margin": 1.0, "margin_reference": "best_positive"}, "train": {"epochs": 3}},
    "ours_e2_posall_lr5e-5_best": {"mine": {"max_positives_per_pair": 100, "margin_reference": "best_positive"},
                                   "train": {"epochs": 2, "learning_rate": 5e-5}},
    "ours_e3_pos3_best": {"mine": {"margin_reference": "best_positive"}, "train": {"epochs": 3}},
    "defaults": {"shipped": True, "profile": True},
    "fixed": {"shipped": True},
    "fixed_top": {"shipped": True, "mine": {"train_grades": "top"}},  # the fixed schedule on top-grade positives only
    # inputs up to 512 tokens (MiniLM's position limit) instead of 256: a third of cranfield's and arguana's
    # documents (and 43 % of arguana's queries) are longer than 256 tokens. (Sweep 27's "topic" rows: topic-aware
    # batches, train.batching=topic of commit 9480a1e, reverted after that sweep; docs/benchmarks.md.)
    "long512": {"shipped": True, "profile": True, "train": {"max_seq_length": 512}},
    # offline pairs of the corpus beside the user's pairs (sdg.augment = 0.5 x their judged positives), all trained on
    "mix_offline05": {"shipped": True, "offline": 0.5},
    "mix_offline025": {"shipped": True, "offline": 0.25},
    "mix_offline1": {"shipped": True, "offline": 1.0, "train": {"base_weight": 0.0}},  # WiSE-FT off at any majority
    "mix_offline05_auto": {"shipped": True, "profile": True, "offline": 0.5},  # (auto scored them as held-out queries)
    "auto_noaug": {"shipped": True, "profile": True, "sdg": {"augment": 0.0}},  # the gpu profile without sdg.augment
    # "auto" as measured up to 2026-12-02: one 15 % held-out slice, lr x 1 / 0.5 and temperature x 2, budget 1.5
    "auto": {"shipped": True, "train": {"schedule": AUTO_V1}},
    "auto_folds": {"shipped": True, "train": {"schedule": {"mode": "auto"}}},  # auto as shipped since 2026-12-04
    "ours_pos_all_epochs": {"shipped": True, "train": {"positives_per_query": 0}},  # every positive, every epoch
    "ours_all_grades": {"shipped": True, "mine": {"train_grades": "all"}},  # every grade > 0 a positive
    "ours_cap10": {"shipped": True, "mine": {"max_positives_per_pair": 10}, "train": {"positives_per_query": 0}},
    "auto_b3": {"shipped": True, "train": {"schedule": {**AUTO_V1, "budget": 3.0}}},
    "ours_p10_best_e2_lr5e-5": {"mine": {"max_positives_per_pair": 10, "margin_reference": "best_positive"},
                                "train": {"epochs": 2, "learning_rate": 5e-5}},
    "ours_p10_best_e3_lr5e-5": {"mine": {"max_positives_per_pair": 10, "margin_reference": "best_positive"},
                                "train": {"epochs": 3, "learning_rate": 5e-5}},
    "ours_posall_best_e3_lr5e-5": {"mine": {"max_positives_per_pair": 100, "margin_reference": "best_positive"},
                                   "train": {"epochs": 3, "learning_rate": 5e-5}},
    "ours_p10_best_e2_lr1e-4": {"mine": {"max_positives_per_pair": 10, "margin_reference": "best_positive"},
                                "train": {"epochs": 2, "learning_rate": 1e-4}},
    "defaults_wise03": {"shipped": "2026-12-01", "train": {"base_weight": 0.3}},  # WiSE-FT: 0.3 x base + 0.7 x fine-tuned
    "defaults_wise05": {"shipped": "2026-12-01", "train": {"base_weight": 0.5}},
    "top_grade": {"shipped": "2026-12-01", "mine": {"train_grades": "top"}},  # the default before 2026-12-01
    "defaults_lr2e-5": {"shipped": "2026-12-01", "train": {"learning_rate": 2e-5}},
    "pos_all_lr2e-5": {"shipped": "2026-12-01", "train": {"positives_per_query": 0, "learning_rate": 2e-5}},
    "defaults_nomargin": {"shipped": "2026-12-01", "mine": {"margin": 1.0}},  # only candidates above the best positive dropped
    "pos16": {"shipped": "2026-12-01", "train": {"positives_per_query": 16}},
    "defaults_t002": {"shipped": "2026-12-01", "train": {"temperature": 0.02}},
    "all_grades_wise05": {"shipped": "2026-12-01", "mine": {"train_grades": "all"}, "train": {"base_weight": 0.5}},
    "all_grades_auto": {"shipped": "2026-12-01", "mine": {"train_grades": "all"}, "train": {"schedule": AUTO_V1}},
    "defaults_lora": {"shipped": "2026-12-01", "train": {"lora": {"enabled": True}, "learning_rate": 2e-4}},
    "defaults_lora_lr5e-4": {"shipped": "2026-12-01", "train": {"lora": {"enabled": True}, "learning_rate": 5e-4}},
    "sym": {"shipped": "2026-12-01", "train": {"symmetric_loss": True}},  # + document-to-query direction
    "soup3": {"shipped": "2026-12-01", "train": {"soup": 3}},  # average of 3 runs' weights
    "sym_soup3": {"shipped": "2026-12-01", "train": {"symmetric_loss": True, "soup": 3}},
    "lr3e-5": {"shipped": "2026-12-01", "train": {"learning_rate": 3e-5}},
    "st_like": {"shipped": "2026-12-01", "mine": {"margin": 1.0}, "train": {"positives_per_query": 0, "learning_rate": 2e-5}},
    "hard5": {"shipped": "2026-12-01", "train": {"hardness": 5.0}},  # hardness-weighted negatives, alpha 5
    "hard2": {"shipped": "2026-12-01", "train": {"hardness": 2.0}},
    "soup3_nomargin": {"shipped": "2026-12-01", "mine": {"margin": 1.0}, "train": {"soup": 3}},
    "margin0": {"shipped": "2026-12-01", "mine": {"margin": 0.0}},  # no positive-aware filter: top unjudged candidates
    "margin0_soup3": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"soup": 3}},
    "margin0_posall_lr2e-5": {"shipped": "2026-12-01", "mine": {"margin": 0.0},
                              "train": {"positives_per_query": 0, "learning_rate": 2e-5}},
    "margin0_posall_lr2e-5_soup3": {"shipped": "2026-12-01", "mine": {"margin": 0.0},
                                    "train": {"positives_per_query": 0, "learning_rate": 2e-5, "soup": 3}},
    "margin0_lr3e-5": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"learning_rate": 3e-5}},
    "margin0_pos16": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"positives_per_query": 16}},
    "margin0_auto": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"schedule": {"mode": "auto"}}},
    "margin0_lr3e-5_soup3": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"learning_rate": 3e-5, "soup": 3}},
    "margin0_posall": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"positives_per_query": 0}},
    "margin0_lr2e-5": {"shipped": "2026-12-01", "mine": {"margin": 0.0}, "train": {"learning_rate": 2e-5}},
    # diagnostics: the ST trainer on embedforge's mined rows, embedforge's trainer on the ST recipe's rows
    "st_ours_rows": {"st": {"lr": 2e-5, "batch_size": 32, "epochs": 3, "warmup_ratio": 0.1, "rows": "ours"}},
    "ours_st_rows": {"shipped": "2026-12-01", "rows": "st", "train": {"positives_per_query": 0, "learning_rate": 2e-5}},
    # issue #13, third round: schedule shape, more negatives, and the rest of the trainer-side gap
    "linear": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0}},  # ST's decay, no wd
    "neg8": {"shipped": "2026-12-02", "mine": {"num_negatives": 8}},
    "neg16": {"shipped": "2026-12-02", "mine": {"num_negatives": 16}},
    "posall_lr2e-5_linear": {"shipped": True, "train": {"positives_per_query": 0, "learning_rate": 2e-5,
                                                        "lr_schedule": "linear", "weight_decay": 0.0}},
    "ours_st_rows_linear": {"shipped": True, "rows": "st", "train": {"positives_per_query": 0, "learning_rate": 2e-5,
                                                                    "lr_schedule": "linear", "weight_decay": 0.0}},
    "lr4e-5": {"shipped": True, "train": {"learning_rate": 4e-5}},
    "neg0": {"shipped": True, "mine": {"num_negatives": 0}},  # in-batch negatives only
    "neg1": {"shipped": True, "mine": {"num_negatives": 1}},
    "neg2": {"shipped": True, "mine": {"num_negatives": 2}},
    "linear_soup3": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0, "soup": 3}},
    "linear_lr5e-5": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0, "learning_rate": 5e-5}},
    "linear_lr5e-5_soup3": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0,
                                                       "learning_rate": 5e-5, "soup": 3}},
    "linear_ld0.8": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0, "layer_decay": 0.8}},
    "linear_ld0.8_lr5e-5": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0,
                                                       "layer_decay": 0.8, "learning_rate": 5e-5}},
    "linear_ld0.8_lr1e-4": {"shipped": True, "train": {"lr_schedule": "linear", "weight_decay": 0.0,
                                                       "layer_decay": 0.8, "learning_rate": 1e-4}},
    # issue #13, fourth round: tail averaging within a run; a second mining round with the fine-tuned model
    # ("remine": mine again with round 1's model, then train from the base model ("from": "base") or go on from
    # round 1's model ("from": "round1"), with the "mine"/"train" overrides of round 2)
    "avg50": {"shipped": True, "train": {"average_last": 0.5}},
    "avg50_lr4e-5": {"shipped": True, "train": {"average_last": 0.5, "learning_rate": 4e-5}},
    "remine": {"shipped": True, "remine": {"from": "base"}},
    "remine_m95": {"shipped": True, "remine": {"from": "base", "mine": {"margin": 0.95}}},
    "remine_cont": {"shipped": True, "remine": {"from": "round1", "train": {"epochs": 1}}},
    "skip1": {"shipped": True, "mine": {"skip_top": 1}},  # negatives from mined ranks 2..5 instead of 1..4
    "skip2": {"shipped": True, "mine": {"skip_top": 2}},
    "skip4": {"shipped": True, "mine": {"skip_top": 4}},
    "skip2_lr5e-5": {"shipped": True, "mine": {"skip_top": 2}, "train": {"learning_rate": 5e-5}},
    "skip2_lr5e-5_soup3": {"shipped": True, "mine": {"skip_top": 2}, "train": {"learning_rate": 5e-5, "soup": 3}},
    # auto schedule over a wider grid (lr x 0.67 / 1.67, temperature x 2), every probe the fixed run's length
    "auto_wide": {"shipped": True, "train": {"schedule": {"mode": "auto", "folds": 1, "budget": 4.0, "candidates": [
        [1.0, 1.0], [1.67, 1.0], [0.67, 1.0], [1.0, 2.0]]}}},
    # the same probes judged on every train query (schedule.folds: k-fold cross-fitting), lr x 1 / 1.67 / 0.67,
    # every probe as long as the fixed run (budget = candidates x k / (k - 1))
    "auto_cv2": {"shipped": True, "train": {"schedule": {"mode": "auto", "folds": 2, "budget": 3.0, "candidates": [
        [1.0, 1.0], [1.67, 1.0], [0.67, 1.0]]}}},
    "auto_cv2_wide": {"shipped": True, "train": {"schedule": {"mode": "auto", "folds": 2, "budget": 5.0, "candidates": [
        [1.0, 1.0], [1.67, 1.0], [2.33, 1.0], [0.67, 1.0], [1.0, 2.0]]}}},
    "auto_cv4": {"shipped": True, "train": {"schedule": {"mode": "auto", "folds": 4, "budget": 9.0, "candidates": [
        [1.0, 1.0], [1.67, 1.0], [0.67, 1.0]]}}},
    # graded judgements in the loss: a row of grade g weighs g^p (train.grade_power); ungraded collections unchanged
    "grade05": {"shipped": True, "train": {"grade_power": 0.5}},
    "grade1": {"shipped": True, "train": {"grade_power": 1.0}},
    "grade2": {"shipped": True, "train": {"grade_power": 2.0}},
    # ST's loss and schedule on its own rows, batched by embedforge's sampler (plan_steps) instead of its trainer's
    "st_plain": {"st": {"lr": 2e-5, "batch_size": 32, "epochs": 3, "warmup_ratio": 0.1, "plain": True}},
    # Matryoshka embeddings: the loss also on the first 1/2 and 1/4 of MiniLM's 384 dimensions (--dims scores them)
    "mrl": {"shipped": True, "profile": True, "train": {"matryoshka_dims": [384, 192, 96]}},
    "mrl_fixed": {"shipped": True, "train": {"matryoshka_dims": [384, 192, 96]}},
    # seconds-long code-path checks (tiny data, CPU)
    "smoke_st": {"st": {"lr": 5e-5, "batch_size": 8, "epochs": 0.2, "warmup_ratio": 0.1}},
    "smoke_sym_soup": {"shipped": True, "train": {"epochs": 0.2, "batch_size": 8, "max_seq_length": 32,
                                                  "symmetric_loss": True, "soup": 2}},
    "smoke_ours": {"shipped": True, "train": {"epochs": 0.2, "batch_size": 8, "max_seq_length": 32}},
    "smoke_grade": {"shipped": True, "train": {"epochs": 0.2, "batch_size": 8, "max_seq_length": 32, "grade_power": 1.0}},
    "smoke_remine_avg": {"shipped": True, "train": {"epochs": 0.2, "batch_size": 8, "max_seq_length": 32,
                                                    "average_last": 0.5}, "remine": {"from": "round1"}},
}


# ------------------------------------------------------------------------------------------------ data
def _qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t")):
            if n == 0 and row[0] == "query-id":
                continue
            if int(row[2]) > 0:
                out.setdefault(row[0], {})[row[1]] = int(row[2])
    return out


def build_inputs(data: Path, out: Path, train_fraction: float = 0.5) -> dict:
    """Chunks (one per document) and train pairs in embedforge's formats, plus the test split for scoring.

    Without ``qrels/train.tsv`` the test queries are split by a hash of their id: ``train_fraction`` of them
    train, the rest test."""
    corpus = {obj["_id"]: (obj.get("title", ""), obj["text"]) for _, obj in contracts.iter_jsonl(data / "corpus.jsonl")}
    corpus = {d: t for d, t in corpus.items() if t[1].strip()}
    queries = {obj["_id"]: obj["text"] for _, obj in contracts.iter_jsonl(data / "queries.jsonl")}
    test_qrels = _qrels(data / "qrels" / "test.tsv")
    if (data / "qrels" / "train.tsv").is_file():
        train_qrels = _qrels(data / "qrels" / "train.tsv")
    else:
        def is_train(q: str) -> bool:
            return int(hashlib.sha256(q.encode()).hexdigest()[:8], 16) / 16**8 < train_fraction
        train_qrels = {q: r for q, r in test_qrels.items() if is_train(q)}
        test_qrels = {q: r for q, r in test_qrels.items() if not is_train(q)}
    chunks = [Chunk(chunk_id=f"{d}#0", doc_id=d, text=text, title=title, position=0, split="train")
              for d, (title, text) in corpus.items()]
    pairs = []
    for q, rels in train_qrels.items():
        docs = [d for d, _ in sorted(rels.items(), key=lambda kv: (-kv[1], kv[0])) if d in corpus]
        if docs:
            grades = {f"{d}#0": rels[d] for d in docs} if len(set(rels.values())) > 1 else {}
            pairs.append(Pair(query_id=q, query=queries[q], positive_chunk_ids=[f"{d}#0" for d in docs],
                              positive_doc_ids=docs, positive_grades=grades, relevance="chunk", split="train",
                              source="qrels/train.tsv"))
    contracts.write_jsonl(out / "chunks" / contracts.CHUNKS_FILE, chunks)
    contracts.write_jsonl(out / "pairs" / contracts.PAIRS_FILE, pairs)
    test_queries = {q: queries[q] for q in test_qrels}
    log.info("data: %d docs, %d train pairs (%d judgements), %d test queries",
             len(chunks), len(pairs), sum(len(p.positive_chunk_ids) for p in pairs), len(test_queries))
    return {"corpus": corpus, "queries": queries, "train_qrels": train_qrels, "test_queries": test_queries,
            "test_qrels": test_qrels, "chunks": out / "chunks", "pairs": out / "pairs"}


# ------------------------------------------------------------------------------------------------ scoring
def evaluate_model(model, data: dict, batch_size: int = 128, dims: list[int] | None = None) -> dict:
    """NDCG/Recall/MAP on the test queries over the whole corpus (exact cosine, model's own prompts), and under
    ``per_query`` each test query's nDCG@10. ``dims``: also nDCG@10 of the first d dimensions of the same
    embeddings, renormalised (``embedforge.retrieval.dimensions.truncate``), under ``ndcg@10_dim`` (encoded once)."""
    from embedforge.retrieval.dimensions import truncate
    from embedforge.retrieval.encode import encode

    doc_ids = list(data["corpus"])
    docs = encode(model, [data["corpus"][d][1] for d in doc_ids], kind="document", batch_size=batch_size)
    qids = list(data["test_queries"])
    qs = encode(model, [data["test_queries"][q] for q in qids], kind="query", batch_size=batch_size)
    out = _score(qs, docs, qids, doc_ids, data)
    if dims:
        out["ndcg@10_dim"] = {d: round(_score(truncate(qs, d), truncate(docs, d), qids, doc_ids, data)["ndcg@10"], 4)
                              for d in dims}
    return out


def _score(qs: np.ndarray, docs: np.ndarray, qids: list[str], doc_ids: list[str], data: dict) -> dict:
    """BEIR metrics of the exact cosine ranking of ``docs`` for ``qs``."""
    import torch
    from beir.retrieval.evaluation import EvaluateRetrieval

    scores = torch.from_numpy(qs) @ torch.from_numpy(docs).T
    top = torch.topk(scores, k=min(100, len(doc_ids)), dim=1)
    results = {q: {doc_ids[j]: float(s) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist())}
               for i, q in enumerate(qids)}
    if data.get("exclude_self"):  # ArguAna/MTEB protocol: the query's own id and identical texts are not results
        for q in qids:
            results[q] = {d: s for d, s in results[q].items()
                          if d != q and data["corpus"][d][1] != data["test_queries"][q]}
    ndcg, _map, recall, _ = EvaluateRetrieval.evaluate(data["test_qrels"], results, [1, 10, 100], ignore_identical_ids=False)
    return {"ndcg@10": ndcg["NDCG@10"], "recall@10": recall["Recall@10"], "recall@100": recall["Recall@100"],
            "map@10": _map["MAP@10"], "per_query": per_query_ndcg(results, data["test_qrels"])}


def per_query_ndcg(model_results: dict, qrels: dict) -> dict[str, float]:
    """nDCG@10 of each test query, for paired comparisons over queries (``bench/paired.py``)."""
    from embedforge.retrieval.ranking import per_query_metrics

    return {q: round(m["ndcg@10"], 4) for q, m in per_query_metrics(qrels, model_results, [10]).items()}


# ------------------------------------------------------------------------------------------------ baseline
def _naive_rows(data: dict, model, num_negatives: int = 4) -> list[dict]:
    """(anchor, positive, negative_1..n) rows; negatives = top-n corpus docs by base-model cosine that are not
    judged relevant to the query (sentence-transformers' mine_hard_negatives, sampling_strategy="top")."""
    from embedforge.retrieval.encode import encode

    doc_ids = list(data["corpus"])
    texts = [data["corpus"][d][1] for d in doc_ids]
    docs = encode(model, texts, kind="document", batch_size=128)
    rows = []
    for q, rels in data["train_qrels"].items():
        qv = encode(model, [data["queries"][q]], kind="query")[0]
        order = np.argsort(-(docs @ qv), kind="stable")
        negs = [texts[j] for j in order if doc_ids[j] not in rels and texts[j] != data["queries"][q]][:num_negatives]
        for d in sorted(rels, key=lambda d: (-rels[d], d)):
            if d in data["corpus"]:
                row = {"anchor": data["queries"][q], "positive": data["corpus"][d][1]}
                row.update({f"negative_{i + 1}": n for i, n in enumerate(negs)})
                rows.append(row)
    return rows


def _our_rows(data: dict, base_model: str, out: Path, num_negatives: int = 4) -> list[dict]:
    """embedforge's mined rows (shipped MineConfig) as trainer rows: diagnostic, the ST trainer on our negatives.
    Rows short of ``num_negatives`` negatives are dropped (the trainer's dataset needs equal columns)."""
    mined = _mined_dir(data, base_model, MineConfig(), out)
    rows = [ex for ex in contracts.read_train_examples(mined) if len(ex.negatives) >= num_negatives]
    return [TrainExample(anchor=ex.anchor, positive=ex.positive, negatives=ex.negatives[:num_negatives]).to_columns()
            for ex in rows]


def _mined_dir(data: dict, base_model: str, mine_cfg: MineConfig, out: Path) -> Path:
    """The mine folder of ``mine_cfg`` and the pairs folder under ``out`` (named by their hash), mined once and then
    reused."""
    from embedforge.stages import mine

    key = mine_cfg.model_dump_json() + ("" if data["pairs"] == out / "pairs" else str(data["pairs"]))
    mined = out / f"mined_{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if not (mined / contracts.MANIFEST).is_file():
        mine.run(data["chunks"], data["pairs"], mined, mine_cfg, base_model=base_model)
    return mined


def _with_offline_pairs(data: dict, sdg_cfg, out: Path) -> Path:
    """A pairs folder holding the train pairs and, beside them, the augmentation pairs ``sdg.augment`` makes of the
    corpus (:func:`embedforge.stages.sdg.augment.augment_pairs`: offline pairs, at most ``sdg_cfg.augment`` x the train
    pairs' judged positives)."""
    from embedforge.stages.sdg.augment import augment_pairs

    pairs = contracts.read_records(Path(data["pairs"]) / contracts.PAIRS_FILE, Pair)
    chunks = contracts.read_records(Path(data["chunks"]) / contracts.CHUNKS_FILE, Chunk)
    generated, _ = augment_pairs(pairs, chunks, sdg_cfg)
    folder = out / f"pairs_augment_{hashlib.sha256(sdg_cfg.model_dump_json().encode()).hexdigest()[:10]}"
    contracts.write_jsonl(folder / contracts.PAIRS_FILE, pairs + generated)
    log.info("pairs: %d train pairs + %d augmentation pairs", len(pairs), len(generated))
    return folder


def _st_mined_dir(data: dict, base_model: str, out: Path) -> Path:
    """The ST recipe's naive rows written as a mine folder (train.jsonl only): diagnostic, our trainer on them."""
    from embedforge.retrieval.encode import load_model, pick_device

    mined = out / "mined_st_rows"
    if not (mined / contracts.TRAIN_FILE).is_file():
        rows = _naive_rows(data, load_model(base_model, pick_device("auto")))
        contracts.write_jsonl(mined / contracts.TRAIN_FILE, rows)
    return mined


def run_st_baseline(data: dict, base_model: str, st: dict, seed: int, out: Path, device: str,
                    plain: bool = False) -> tuple[object, dict]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )

    from embedforge.retrieval.encode import resolve_model_path
    from embedforge.stages.train.setup import seed_everything

    seed_everything(seed)
    model = SentenceTransformer(resolve_model_path(base_model), device=device)
    if st.get("max_seq_length"):
        model.max_seq_length = st["max_seq_length"]
    rows = _naive_rows(data, model) if st.get("rows") != "ours" else _our_rows(data, base_model, out)
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    t0 = time.perf_counter()
    try:
        if plain or st.get("plain"):
            raise ImportError("plain loop requested")
        from datasets import Dataset
        from sentence_transformers import (
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.base.sampler import BatchSamplers

        args = SentenceTransformerTrainingArguments(
            output_dir=str(out / "st_tmp"), num_train_epochs=st["epochs"], per_device_train_batch_size=st["batch_size"],
            learning_rate=st["lr"], warmup_steps=st["warmup_ratio"], batch_sampler=BatchSamplers.NO_DUPLICATES,
            bf16=device.startswith("cuda"), save_strategy="no", report_to="none", seed=seed, logging_steps=1000,
        )
        SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss).train()
        how = "SentenceTransformerTrainer"
    except ImportError:
        how = _plain_mnrl_loop(model, loss, rows, st, seed, device)
    return model, {"rows": len(rows), "train_seconds": round(time.perf_counter() - t0, 2), "how": how}


def _plain_mnrl_loop(model, loss, rows: list[dict], st: dict, seed: int, device: str) -> str:
    """The trainer's defaults without ``datasets``: AdamW (no weight decay), linear warm-up/decay, clip 1.0, bf16."""
    import torch
    from sentence_transformers.util import batch_to_device
    from transformers import get_linear_schedule_with_warmup

    from embedforge.contracts import TrainExample
    from embedforge.stages.train.batching import plan_steps

    examples = [TrainExample.from_columns(r) for r in rows]
    plan = plan_steps(examples, st["batch_size"], st["epochs"], seed)
    opt = torch.optim.AdamW(model.parameters(), lr=st["lr"], weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, round(st["warmup_ratio"] * len(plan)), len(plan))
    cols = list(rows[0])
    model.train()
    for idx in plan:
        feats = [batch_to_device(model.preprocess([rows[i][c] for i in idx]), model.device) for c in cols]
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
        with ctx:
            value = loss(feats, None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    return "plain loop with sentence-transformers MultipleNegativesRankingLoss"


# ------------------------------------------------------------------------------------------------ ours
def run_ours(data: dict, base_model: str, spec: dict, seed: int, out: Path, device: str) -> tuple[object, dict]:
    from sentence_transformers import SentenceTransformer

    from embedforge.stages import train

    base = SHIPPED_ON.get(spec.get("shipped"), {"mine": {}, "train": {}}) if spec.get("shipped") else V0
    mine_cfg = MineConfig(**{**base["mine"], **spec.get("mine", {})})
    train_cfg = TrainConfig(**{**base["train"], **spec.get("train", {}), "seed": seed, "device": device})
    # "offline": sdg.augment measured before it was an sdg setting (sweeps 22-23: the generator seeded per run)
    sdg_cfg = SdgConfig(**({"augment": spec["offline"], "seed": seed} if "offline" in spec else spec.get("sdg", {})))
    if spec.get("profile"):  # the device's compute profile, as `embedforge run --pairs` applies it
        resolved, _ = PipelineConfig(sdg=sdg_cfg, mine=mine_cfg, train=train_cfg).resolved(device.startswith("cuda"),
                                                                                           pairs_given=True)
        sdg_cfg, mine_cfg, train_cfg = resolved.sdg, resolved.mine, resolved.train
    st_rows = spec.get("rows") == "st"
    if sdg_cfg.augment > 0:  # the user's pairs plus the augmentation pairs of the same corpus
        data = {**data, "pairs": _with_offline_pairs(data, sdg_cfg, out)}
    mined = _st_mined_dir(data, base_model, out) if st_rows else _mined_dir(data, base_model, mine_cfg, out)
    model_dir = out / "model"
    runs = [train.run(mined, model_dir, train_cfg, base_model=base_model, prompts=PromptsConfig())]
    if "remine" in spec:  # round 2: negatives mined by round 1's model
        import shutil

        from embedforge.stages import mine

        r2 = spec["remine"]
        round1, mined = out / "model_round1", out / "mined_round2"
        shutil.rmtree(round1, ignore_errors=True)
        shutil.rmtree(mined, ignore_errors=True)
        model_dir.rename(round1)
        mine.run(data["chunks"], data["pairs"], mined, MineConfig(**{**mine_cfg.model_dump(), **r2.get("mine", {})}),
                 base_model=str(round1))
        cfg2 = TrainConfig(**{**train_cfg.model_dump(), **r2.get("train", {})})
        start = str(round1) if r2.get("from") == "round1" else base_model
        runs.append(train.run(mined, model_dir, cfg2, base_model=start, prompts=PromptsConfig()))
    m = runs[-1]
    dropped = contracts.read_manifest(mined).counts["dropped_by_margin"] if contracts.has_manifest(mined) else 0
    info = {"rows": m.counts["examples"], "steps": sum(r.counts["steps"] for r in runs),
            "train_seconds": sum(r.result.train_seconds for r in runs), "final_loss": m.result.final_loss,
            "dropped_by_margin": dropped}
    if m.result.schedule is not None and m.result.schedule.mode == "auto":  # what the search chose, and why
        choice = m.result.schedule
        info["schedule"] = choice.reason
        info["chosen"] = {"learning_rate": choice.learning_rate, "temperature": choice.temperature,
                          "epochs": choice.epochs, "augment": choice.augment}
        # every probe's per-query held-out scores (not in the manifest): bench/replay_choice.py replays the choice
        info["base_score"] = choice.base_score
        info["trials"] = [{**t.model_dump(), "per_query": {k: [round(v, 4) for v in vs] for k, vs in t.per_query.items()}}
                          for t in choice.trials]
    return SentenceTransformer(str(model_dir), device=device), info


def emit_row(row: dict, json_path: Path | None) -> None:
    """Print one result as a JSON line (and append it to ``json_path`` when given)."""
    print(json.dumps(row), flush=True)
    if json_path:
        with json_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cranfield")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_train_quality")
    ap.add_argument("--base-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--variants", default="base,st_lr2e-5,defaults", help=f"comma list of {sorted(VARIANTS)}")
    ap.add_argument("--seeds", default="13", help="comma list of seeds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--train-fraction", type=float, default=0.5, help="query split when there is no qrels/train.tsv")
    ap.add_argument("--exclude-self", action="store_true", help="drop the query's own id/text from rankings (ArguAna)")
    ap.add_argument("--st-plain", action="store_true", help="baseline in a plain loop even if `datasets` is installed")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per result here")
    ap.add_argument("--dims", default="", help="comma list: also report nDCG@10 of every model at these prefix "
                    "dimensions (slice + renormalise the full embeddings), e.g. 384,192,96 for the mrl variants")
    ap.add_argument("--max-seq-length", type=int, default=None, help="truncate training inputs (ST and ours alike; "
                    "reduced CPU runs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from embedforge.retrieval.encode import load_model, pick_device

    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    data = build_inputs(args.data, args.out, args.train_fraction)
    data["exclude_self"] = args.exclude_self
    results = []
    for name in args.variants.split(","):
        spec = VARIANTS[name]
        if args.max_seq_length and name != "base":
            key = "st" if "st" in spec else "train"
            spec = {**spec, key: {**spec.get(key, {}), "max_seq_length": args.max_seq_length}}
        for seed in ([13] if name == "base" else [int(s) for s in args.seeds.split(",")]):
            t0 = time.perf_counter()
            if name == "base":
                model, info = load_model(args.base_model, device), {}
            elif "st" in spec:  # the sentence-transformers reference
                model, info = run_st_baseline(data, args.base_model, spec["st"], seed, args.out, device, args.st_plain)
            else:
                model, info = run_ours(data, args.base_model, spec, seed, args.out, device)
            metrics = evaluate_model(model, data, dims=[int(d) for d in args.dims.split(",") if d])
            per_query = metrics.pop("per_query")
            by_dim = metrics.pop("ndcg@10_dim", None)
            row = {"variant": name, "seed": seed, **{k: round(v, 4) for k, v in metrics.items()},
                   **({"ndcg@10_dim": by_dim} if by_dim else {}), **info,
                   "seconds": round(time.perf_counter() - t0, 1), "device": device,
                   "per_query": per_query}
            results.append(row)
            emit_row(row, args.json)
    print("\nvariant              seed  ndcg@10  recall@100")
    for r in results:
        print(f"{r['variant']:<20} {r['seed']:>4}  {r['ndcg@10']:.4f}   {r['recall@100']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

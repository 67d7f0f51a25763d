"""Pairs as users have them: graded judgements through mining and evaluation, and a real `embedforge run --pairs`
on a file with repeated query texts and graded positives (real model, FAISS, MLflow sqlite, kfp.local)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from embedforge import contracts
from embedforge.config import MineConfig
from embedforge.contracts import Pair
from embedforge.retrieval.ranking import build_eval_set, retrieval_metrics
from embedforge.stages import mine

FAST = [
    "train.epochs=1", "train.batch_size=16", "evaluate.k_values=[1,5,10]", "export.parity_samples=16",
    "validate.min_train_pairs=5", "validate.min_eval_pairs=1",
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "embedforge.cli", *args], capture_output=True, text=True, env=e,
                          timeout=1500)


def _graded_pair(split: str = "train", grades: dict[str, int] | None = None) -> Pair:
    return Pair(query_id="loop", query="How do I leave a loop early?", positive_doc_ids=["break.rst", "continue.rst"],
                positive_grades={"break.rst": 2} if grades is None else grades, relevance="document", split=split)


def test_mining_trains_on_every_grade_or_the_top_one_and_never_negates_the_lower_ones(tmp_path, chunks_dir, base_model):
    chunks = contracts.read_chunks(chunks_dir)
    by_doc = {d: {c.text for c in chunks if c.doc_id == d} for d in ("break.rst", "continue.rst")}

    def rows(pair: Pair, cfg: MineConfig = MineConfig(train_grades="top")) -> list:
        out = tmp_path / f"mined-{len(pair.positive_grades)}-{cfg.train_grades}"
        contracts.write_jsonl(tmp_path / pair.split / contracts.PAIRS_FILE, [pair])
        mine.run(chunks_dir, tmp_path / pair.split, out, cfg, base_model=base_model)
        return contracts.read_train_examples(out)

    graded = rows(_graded_pair())
    assert [r.positive in by_doc["break.rst"] for r in graded] == [True]  # continue.rst (grade 1) is not a positive
    assert graded[0].negatives and not (by_doc["break.rst"] | by_doc["continue.rst"]) & set(graded[0].negatives)
    ungraded = rows(_graded_pair(grades={}))  # the same judgement without grades trains on both documents
    assert sorted(r.positive in by_doc["continue.rst"] for r in ungraded) == [False, True]
    every_grade = rows(_graded_pair(), MineConfig())  # the default, mine.train_grades=all: both grades train
    assert sorted(r.positive in by_doc["continue.rst"] for r in every_grade) == [False, True]


def test_evaluation_scores_with_the_grades(chunks_dir):
    """qrels carry the grades, and nDCG uses them (trec_eval gain = grade): the grade-1 document ranked above the
    grade-2 one costs nDCG, where binary judgements would score the ranking 1.0."""
    chunks = contracts.read_chunks(chunks_dir)
    results = {"loop": {"continue.rst": 0.9, "break.rst": 0.8}}
    graded = build_eval_set(chunks, [_graded_pair("eval")])
    assert graded.qrels == {"loop": {"break.rst": 2, "continue.rst": 1}}
    binary = build_eval_set(chunks, [_graded_pair("eval", grades={})])
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert retrieval_metrics(graded.qrels, results, [10])["ndcg@10"] == pytest.approx(expected, abs=1e-4)
    assert retrieval_metrics(binary.qrels, results, [10])["ndcg@10"] == pytest.approx(1.0)


def test_run_with_repeated_queries_and_grades_completes_and_says_what_it_merged(tmp_path, tiny_corpus):
    """The product path that used to stop at validate: every topic once, two queries repeated (one with a
    different case and spacing, one at a higher grade), graded positives; the run completes and summary.json
    counts what sdg merged. With ``sdg.augment`` on (the fixed CPU schedule trains on every row) it also counts the
    offline pairs sdg made of the train documents and the augmentation rows train used."""
    topics = sorted(p.stem for p in tiny_corpus.glob("*.rst"))
    rows = [{"query": f"what does the {t} statement do", "positive_ids": [f"{t}.rst"]} for t in topics]
    rows += [
        {"query": "What does the  ASSERT statement do", "positive_ids": ["raise.rst"], "query_id": "again"},
        {"query": "how do I leave a loop early", "positive_ids": ["break.rst", "continue.rst"],
         "relevance": {"break.rst": 2}},
        {"query": "How do I leave a loop early", "positive_ids": ["while.rst"], "relevance": {"while.rst": 1}},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    r = _cli("run", "--corpus", str(tiny_corpus), "--pairs", str(pairs), "--out", str(out), *FAST, "sdg.augment=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "succeeded", summary["error"]
    counts = summary["counts"]["pairs"]
    assert (counts["pairs_file_rows"], counts["duplicate_queries_merged"]) == (len(rows), 2)
    assert counts["augment_pairs"] > 0
    assert counts["train"] + counts["eval"] == len(rows) - 2 + counts["augment_pairs"]
    assert summary["counts"]["augment_rows_trained"] > 0 and summary["train_schedule"]["augment"] is True
    assert summary["sdg"]["graded_pairs"] == 1
    said = " ".join(r.stderr.split())  # the console says what train trained with
    assert "train schedule fixed: lr" in said and "epochs, with the augmentation rows (train.schedule.mode=fixed)" in said

"""Validate (Great Expectations) on real sdg output, and on crafted bad pairs that must fail with named rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedforge.config import ValidateConfig
from embedforge.contracts import (
    MANIFEST,
    PAIRS_FILE,
    VALIDATION_FILE,
    Pair,
    read_chunks,
    read_json,
    read_manifest,
    write_jsonl,
)
from embedforge.errors import ValidationFailed
from embedforge.stages import validate

CHECKS = ["query_not_null", "query_not_blank", "query_length", "unique_query_ids", "unique_queries_per_split", "has_positive",
          "positives_resolve", "no_eval_positive_in_train", "min_train_pairs", "min_eval_pairs"]


@pytest.fixture(scope="module")
def validation_dir(tmp_path_factory, chunks_dir, pairs_dir) -> Path:
    out = tmp_path_factory.mktemp("validation")
    validate.run(chunks_dir, pairs_dir, out, ValidateConfig())
    return out


def test_real_sdg_output_passes(validation_dir, pairs_dir):
    summary = read_json(validation_dir / VALIDATION_FILE)
    assert summary["success"] is True
    assert [r["check"] for r in summary["results"]] == CHECKS
    assert all(r["success"] and r["unexpected_count"] == 0 for r in summary["results"])
    assert {r["expectation"] for r in summary["results"]} >= {
        "expect_column_values_to_not_be_null", "expect_column_values_to_not_match_regex",
        "expect_column_value_lengths_to_be_between",
        "expect_compound_columns_to_be_unique", "expect_column_values_to_be_in_set", "expect_table_row_count_to_be_between"}
    m = read_manifest(validation_dir)
    pm = read_manifest(pairs_dir)
    assert m.stage == "validate" and m.counts["success"] == 1 and m.counts["failed_expectations"] == 0
    assert (m.counts["train_pairs"], m.counts["eval_pairs"]) == (pm.counts["train_pairs"], pm.counts["eval_pairs"])
    assert m.input_sha256["pairs"]  # upstream manifests are fingerprinted


def _bad_pairs(chunks_dir, pairs_dir, out: Path) -> Path:
    """Real pairs plus one bad row per check (and a duplicate-in-the-other-split row that is allowed)."""
    chunks = read_chunks(chunks_dir)
    train = next(c for c in chunks if c.split == "train")
    ev = next(c for c in chunks if c.split == "eval")
    good = [p for p in validate.read_pairs(pairs_dir) if p.split == "train"][:12]
    dup_query = good[0].query
    bad = [
        Pair(query_id="empty-q", query="", positive_chunk_ids=[train.chunk_id], split="train"),
        Pair(query_id="dup-q", query="  " + dup_query.upper() + " ", positive_chunk_ids=[train.chunk_id], split="train"),
        Pair(query_id="other-split-same-query", query=dup_query, positive_chunk_ids=[ev.chunk_id], split="eval"),
        Pair(query_id="no-positive", query="what is missing here", split="train"),
        Pair(query_id="unresolved", query="where did my passage go", relevance="document", split="train",
             meta={"unresolved": ["a passage that is nowhere"]}),
        Pair(query_id="ghost-chunk", query="which chunk is this", positive_chunk_ids=["ghost.rst#0"], split="train"),
        Pair(query_id="leak", query="an eval document in a train pair", positive_chunk_ids=[ev.chunk_id],
             positive_doc_ids=[ev.doc_id], split="train"),
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PAIRS_FILE, good + bad)
    return out


def test_bad_pairs_fail_with_named_checks_and_rows(chunks_dir, pairs_dir, tmp_path):
    pairs = _bad_pairs(chunks_dir, pairs_dir, tmp_path / "pairs")
    out = tmp_path / "validation"
    with pytest.raises(ValidationFailed) as e:
        validate.run(chunks_dir, pairs, out, ValidateConfig(min_train_pairs=50, min_eval_pairs=3))
    msg = str(e.value)

    # written before raising
    summary = read_json(out / VALIDATION_FILE)
    assert (out / MANIFEST).is_file() and read_manifest(out).counts["success"] == 0
    assert str(out / VALIDATION_FILE) in msg
    failed = {r["check"]: r for r in summary["results"] if not r["success"]}
    assert set(failed) == {"query_not_blank", "query_length", "unique_queries_per_split", "has_positive", "positives_resolve",
                           "no_eval_positive_in_train", "min_train_pairs", "min_eval_pairs"}

    def example_ids(check):
        return {x["query_id"] for x in failed[check]["examples"]}

    assert example_ids("query_length") == {"empty-q"}
    assert "dup-q" in example_ids("unique_queries_per_split")  # case/whitespace-insensitive, same split only
    assert "other-split-same-query" not in example_ids("unique_queries_per_split")
    assert example_ids("has_positive") == {"no-positive", "unresolved"}
    assert example_ids("positives_resolve") == {"unresolved", "ghost-chunk"}
    assert example_ids("no_eval_positive_in_train") == {"leak"}
    assert failed["min_eval_pairs"]["observed_value"] == 1 and failed["min_train_pairs"]["observed_value"] == 18
    assert failed["positives_resolve"]["kwargs"] == {"column": "positives_resolve", "value_set": [True]}

    # one line: each failed check with its count, two example rows 'query_id: query [why]' and the fix
    assert "\n" not in msg and msg.startswith("pairs failed 8 of 10 data-quality checks: ")
    for check in failed:
        assert f"{check} (" in msg and validate.FIXES[check] in msg
    assert "query_length (1 row(s), e.g. empty-q: ''): fix or drop these queries, or change validate.min_query_chars" in msg
    assert "no_eval_positive_in_train (1 row(s), e.g. leak: 'an eval document in a train pair' [eval documents" in msg
    assert ("positives_resolve (2 row(s), e.g. unresolved: 'where did my passage go' [no document positive; "
            "unresolved positives: ['a passage that is nowhere']]; ghost-chunk: 'which chunk is this' "
            "[ids not in the corpus: ['ghost.rst#0']]): point the positives") in msg
    assert ("min_eval_pairs (observed 1, expected >= 3): add documents or pairs, or lower validate.min_eval_pairs"
            in msg)


def test_whitespace_only_query_fails_with_count_examples_and_fix(chunks_dir, tmp_path):
    train = next(c for c in read_chunks(chunks_dir) if c.split == "train")
    rows = [Pair(query_id=f"ok{i}", query=f"what does statement {i} do", positive_chunk_ids=[train.chunk_id],
                 split="train") for i in range(3)]
    rows += [Pair(query_id=f"blank{i}", query=q, positive_chunk_ids=[train.chunk_id], split="train")
             for i, q in enumerate(["   ", "\t \n ", "    "])]
    write_jsonl(tmp_path / "p" / PAIRS_FILE, rows)
    with pytest.raises(ValidationFailed) as e:
        validate.run(chunks_dir, tmp_path / "p", tmp_path / "v",  # (blank queries also repeat one another)
                     ValidateConfig(min_train_pairs=1, min_eval_pairs=0, unique_queries=False))
    msg = str(e.value)
    assert msg == ("pairs failed 1 of 9 data-quality checks: query_not_blank (3 row(s), e.g. blank0: '   '; "
                   "blank1: '\\t \\n '): give these pairs a real query or drop them "
                   f"(all rows: {tmp_path / 'v' / VALIDATION_FILE})")


def test_switches_and_example_limit(chunks_dir, pairs_dir, tmp_path):
    chunks = read_chunks(chunks_dir)
    train = next(c for c in chunks if c.split == "train")
    rows = [Pair(query_id=f"q{i}", query="the same question", positive_chunk_ids=[train.chunk_id], split="train")
            for i in range(4)]
    rows += [Pair(query_id=f"x{i}", query="x", positive_chunk_ids=[train.chunk_id], split="train") for i in range(4)]
    write_jsonl(tmp_path / "p" / PAIRS_FILE, rows)
    with pytest.raises(ValidationFailed) as e:
        validate.run(chunks_dir, tmp_path / "p", tmp_path / "v",
                     ValidateConfig(unique_queries=False, min_train_pairs=1, min_eval_pairs=0, max_examples=2))
    summary = read_json(tmp_path / "v" / VALIDATION_FILE)
    assert [r["check"] for r in summary["results"] if not r["success"]] == ["query_length"]  # duplicates allowed
    (length,) = [r for r in summary["results"] if r["check"] == "query_length"]
    assert length["unexpected_count"] == 4 and len(length["examples"]) == 2
    assert "query_length (4 row(s), e.g. x0: 'x'; x1: 'x'):" in str(e.value)


def test_component_passes_and_fails(chunks_dir, pairs_dir, tmp_path):
    from embedforge.components.validate.component import validate as component
    from kfp import dsl

    validation, metrics = dsl.Artifact(uri=str(tmp_path / "ok")), dsl.Metrics(uri=str(tmp_path / "m"))
    component.python_func(chunks=dsl.Dataset(uri=str(chunks_dir)), pairs=dsl.Dataset(uri=str(pairs_dir)), config={},
                          validation=validation, metrics=metrics)
    assert read_json(Path(validation.path) / VALIDATION_FILE)["success"] is True
    assert metrics.metadata["failed_expectations"] == 0 and metrics.metadata["success"] == 1

    validation = dsl.Artifact(uri=str(tmp_path / "bad"))
    with pytest.raises(ValidationFailed, match="min_train_pairs"):
        component.python_func(chunks=dsl.Dataset(uri=str(chunks_dir)), pairs=dsl.Dataset(uri=str(pairs_dir)),
                              config={"min_train_pairs": 100000}, validation=validation,
                              metrics=dsl.Metrics(uri=str(tmp_path / "m2")))
    assert read_json(Path(validation.path) / VALIDATION_FILE)["success"] is False


def test_pairs_file_with_repeated_queries_passes_once_sdg_merged_them(chunks_dir, tmp_path):
    """The run that used to stop at validate ("pairs failed 1 of N"): repeated query texts in a --pairs file are
    merged by sdg, so validation passes; the same repeats written as separate pairs fail naming the first pair
    with that query and saying how to fix it."""
    from embedforge.config import SdgConfig
    from embedforge.stages import sdg

    chunks = read_chunks(chunks_dir)
    train_docs = list(dict.fromkeys(c.doc_id for c in chunks if c.split == "train"))[:4]
    eval_doc = next(c.doc_id for c in chunks if c.split == "eval")
    rows = [{"query": f"what does {d} explain", "positive_ids": [d]} for d in train_docs]
    rows += [{"query": f"What does {train_docs[0]}  explain", "positive_ids": [train_docs[1]], "relevance": {train_docs[1]: 2}},
             {"query": "which document is held out", "positive_ids": [eval_doc]}]
    pf = tmp_path / "pairs.jsonl"
    pf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ValidateConfig(min_train_pairs=4, min_eval_pairs=1)
    sdg.run(chunks_dir, tmp_path / "pairs", SdgConfig(), pairs_file=str(pf))
    m = validate.run(chunks_dir, tmp_path / "pairs", tmp_path / "v", cfg)
    assert (m.counts["success"], m.counts["train_pairs"], m.counts["eval_pairs"]) == (1, 4, 1)

    unmerged = [Pair(query_id=f"q{i}", query=r["query"], positive_doc_ids=r["positive_ids"], relevance="document",
                     split="eval" if r["positive_ids"] == [eval_doc] else "train") for i, r in enumerate(rows)]
    write_jsonl(tmp_path / "raw" / PAIRS_FILE, unmerged)
    with pytest.raises(ValidationFailed) as e:
        validate.run(chunks_dir, tmp_path / "raw", tmp_path / "v2", cfg)
    assert str(e.value).startswith(
        f"pairs failed 1 of 10 data-quality checks: unique_queries_per_split (2 row(s), e.g. q0: 'what does "
        f"{train_docs[0]} explain'; q4: 'What does {train_docs[0]}  explain' [same query as q0]): merge pairs with the same query text into one "
        "pair listing all their positives")

"""Validate: a Great Expectations suite over the pairs table, before any compute is spent on mining/training.

The pairs (``pairs.jsonl``) become a pandas DataFrame with derived columns, validated in an ephemeral GX context:

==========================  ================================================  ==============================
check                       expectation                                       column(s)
==========================  ================================================  ==============================
query_not_null              expect_column_values_to_not_be_null               query
query_not_blank             expect_column_values_to_not_match_regex           query_visible (not whitespace only)
query_length                expect_column_value_lengths_to_be_between         query (min/max_query_chars)
unique_query_ids            expect_column_values_to_be_unique                 query_id
unique_queries_per_split    expect_compound_columns_to_be_unique              split, query_key (if unique_queries)
has_positive                expect_column_values_to_be_in_set [True]          has_positive
positives_resolve           expect_column_values_to_be_in_set [True]          positives_resolve
no_eval_positive_in_train   expect_column_values_to_be_in_set [True]          no_eval_positive_in_train
min_train_pairs             expect_table_row_count_to_be_between              rows with split == "train"
min_eval_pairs              expect_table_row_count_to_be_between              rows with split == "eval"
==========================  ================================================  ==============================

``query_key`` is the query lower-cased with whitespace collapsed; ``query_visible`` is the query without the
characters that show nothing and are not whitespace (:func:`~embedforge.retrieval.text.visible_text`: zero-width
space, BOM, control characters ...), so a query of Unicode blanks alone (NBSP, EM SPACE, U+200B, U+FEFF) fails
``query_not_blank`` like an empty one (:func:`~embedforge.retrieval.text.is_blank`); ``positives_resolve`` is True when every
positive chunk id / document id exists in the chunks and nothing is left in ``meta.unresolved`` (BYO pairs);
``no_eval_positive_in_train`` is False for a train pair with a positive document of the eval split. A repeated
query's example in ``unique_queries_per_split`` names the first pair with that query. Bring-your-own pairs never fail
``unique_queries_per_split``: sdg merges lines that share a query text (:mod:`embedforge.stages.sdg.byo`).

``validation.json`` (success, per-expectation results with example rows) and ``manifest.json`` are written
ALWAYS; then, if anything failed, :class:`~embedforge.errors.ValidationFailed` says in one line, per failed
check, how many rows failed (or the observed count), two example rows (``query_id: 'query' [why]``) and what to
do (:data:`FIXES`), then the path of ``validation.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.config import ValidateConfig
from embedforge.contracts import (
    VALIDATION_FILE,
    Chunk,
    Manifest,
    Pair,
    StageTimer,
    read_chunks,
    read_pairs,
    write_json,
)
from embedforge.errors import ValidationFailed

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["query_id", "query", "split", "source", "query_key", "query_visible", "has_positive", "positives_resolve",
           "no_eval_positive_in_train", "detail", "same_query_as"]


def pairs_frame(pairs: list[Pair], chunks: list[Chunk]) -> "pd.DataFrame":
    """The pairs table with the derived columns the suite checks.

    Args:
        pairs: Pair records.
        chunks: Chunk records of the corpus (both splits).

    Returns:
        DataFrame with columns :data:`COLUMNS` (``detail`` explains a failed resolution or leak;
        ``same_query_as`` is the first query id of the split with this query, for a repeat, else "").
    """
    import pandas as pd

    from embedforge.retrieval.text import is_blank, query_key, visible_text

    chunk_doc = {c.chunk_id: c.doc_id for c in chunks}
    doc_split: dict[str, str] = {}
    for c in chunks:
        doc_split.setdefault(c.doc_id, c.split)
    rows = []
    first_of: dict[tuple[str, str], str] = {}  # (split, query_key) -> first query id with that query
    for p in pairs:
        key = query_key(p.query) if isinstance(p.query, str) else None
        first = first_of.setdefault((p.split, key), p.query_id) if key is not None else p.query_id
        missing = [cid for cid in p.positive_chunk_ids if cid not in chunk_doc]
        missing += [d for d in p.positive_doc_ids if d not in doc_split]
        unresolved = list(p.meta.get("unresolved") or [])
        has_positive = bool(p.positive_chunk_ids) if p.relevance == "chunk" else bool(p.positive_doc_ids)
        docs = set(p.positive_doc_ids) | {chunk_doc[c] for c in p.positive_chunk_ids if c in chunk_doc}
        eval_docs = sorted(d for d in docs if doc_split.get(d) == "eval")
        detail = []
        if isinstance(p.query, str) and p.query.strip() and is_blank(p.query):  # no plain whitespace: say what it is
            chars = sorted({f"U+{ord(ch):04X}" for ch in p.query})
            detail.append(f"only invisible characters: {', '.join(chars[:4])}")
        if not has_positive:
            detail.append(f"no {'chunk' if p.relevance == 'chunk' else 'document'} positive")
        if missing:
            detail.append(f"ids not in the corpus: {missing[:3]}")
        if unresolved:
            detail.append(f"unresolved positives: {[u[:60] for u in unresolved[:3]]}")
        if p.split == "train" and eval_docs:
            detail.append(f"eval documents as positives: {eval_docs[:3]}")
        rows.append({
            "query_id": p.query_id,
            "query": p.query,
            "split": p.split,
            "source": p.source,
            "query_key": key,
            "query_visible": visible_text(p.query) if isinstance(p.query, str) else p.query,
            "has_positive": has_positive,
            "positives_resolve": not missing and not unresolved,
            "no_eval_positive_in_train": not (p.split == "train" and eval_docs),
            "detail": "; ".join(detail),
            "same_query_as": first if first != p.query_id else "",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _suite(cfg: ValidateConfig) -> list[tuple[str, Any]]:
    import great_expectations as gx

    E = gx.expectations
    checks: list[tuple[str, Any]] = [
        ("query_not_null", E.ExpectColumnValuesToNotBeNull(column="query")),
        ("query_not_blank", E.ExpectColumnValuesToNotMatchRegex(column="query_visible", regex=r"^\s*$")),
        ("query_length", E.ExpectColumnValueLengthsToBeBetween(column="query", min_value=cfg.min_query_chars,
                                                               max_value=cfg.max_query_chars)),
        ("unique_query_ids", E.ExpectColumnValuesToBeUnique(column="query_id")),
    ]
    if cfg.unique_queries:
        checks.append(("unique_queries_per_split", E.ExpectCompoundColumnsToBeUnique(column_list=["split", "query_key"])))
    checks += [
        ("has_positive", E.ExpectColumnValuesToBeInSet(column="has_positive", value_set=[True])),
        ("positives_resolve", E.ExpectColumnValuesToBeInSet(column="positives_resolve", value_set=[True])),
        ("no_eval_positive_in_train", E.ExpectColumnValuesToBeInSet(column="no_eval_positive_in_train", value_set=[True])),
        ("min_train_pairs", E.ExpectTableRowCountToBeBetween(min_value=cfg.min_train_pairs, row_condition='split=="train"',
                                                             condition_parser="pandas")),
        ("min_eval_pairs", E.ExpectTableRowCountToBeBetween(min_value=cfg.min_eval_pairs, row_condition='split=="eval"',
                                                            condition_parser="pandas")),
    ]
    return checks


def run_suite(df: "pd.DataFrame", cfg: ValidateConfig) -> dict[str, Any]:
    """Validate the pairs table with Great Expectations and summarise the result.

    Args:
        df: Output of :func:`pairs_frame`.
        cfg: Thresholds.

    Returns:
        ``{"success", "statistics", "results": [{check, expectation, kwargs, success, unexpected_count,
        observed_value, examples: [{query_id, query, detail}]}]}`` in suite order.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(name="embedforge").add_dataframe_asset(name="pairs")
    batch_def = asset.add_batch_definition_whole_dataframe("all_pairs")
    suite = context.suites.add(gx.ExpectationSuite(name="embedforge_pairs"))
    checks = _suite(cfg)
    for _, exp in checks:
        suite.add_expectation(exp)
    vdef = context.validation_definitions.add(gx.ValidationDefinition(name="pairs", data=batch_def, suite=suite))
    result = vdef.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["query_id"],
                       "partial_unexpected_count": cfg.max_examples},
    )

    by_id = {r.expectation_config.id: r for r in result.results}
    rows_by_qid = {}
    for rec in df[["query_id", "query", "detail", "same_query_as"]].to_dict("records"):
        rows_by_qid.setdefault(rec["query_id"], rec)
    out = []
    for check, exp in checks:
        r = by_id[exp.id]
        res = r.result or {}
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
        examples = []
        for idx in (res.get("unexpected_index_list") or [])[: cfg.max_examples]:
            qid = idx.get("query_id") if isinstance(idx, dict) else None
            row = rows_by_qid.get(qid, {})
            detail = row.get("detail") or ""
            if check == "unique_queries_per_split" and row.get("same_query_as"):
                detail = f"same query as {row['same_query_as']}"
            examples.append({"query_id": qid, "query": row.get("query"), "detail": detail})
        entry = {
            "check": check,
            "expectation": r.expectation_config.type,
            "kwargs": kwargs,
            "success": bool(r.success),
            "unexpected_count": int(res.get("unexpected_count") or 0),
            "examples": examples,
        }
        if "observed_value" in res:
            entry["observed_value"] = res["observed_value"]
        if r.exception_info and r.exception_info.get("raised_exception"):
            entry["exception"] = str(r.exception_info.get("exception_message"))
        out.append(entry)
    return {"success": all(e["success"] for e in out), "statistics": dict(result.statistics), "results": out}


#: What to do about each failed check (the one-line error quotes it).
FIXES = {
    "query_not_null": "give every pair a query",
    "query_not_blank": "give these pairs a real query or drop them",
    "query_length": "fix or drop these queries, or change validate.min_query_chars / validate.max_query_chars",
    "unique_query_ids": "give every pair its own query_id",
    "unique_queries_per_split": ("merge pairs with the same query text into one pair listing all their positives "
                                 "(a --pairs file is merged by sdg; this comes from a generator), drop the repeats, "
                                 "or set validate.unique_queries=false"),
    "has_positive": "give every pair a positive (positive_ids / positive_chunk_ids)",
    "positives_resolve": "point the positives at chunk or document ids of this corpus (see chunks.jsonl)",
    "no_eval_positive_in_train": "move these pairs to the eval split or drop them (eval documents must stay unseen)",
    "min_train_pairs": "add documents or pairs, or lower validate.min_train_pairs",
    "min_eval_pairs": "add documents or pairs, or lower validate.min_eval_pairs",
}

#: Example rows quoted per failed check in the one-line error (validation.json keeps validate.max_examples).
EXAMPLES_IN_MESSAGE = 2


def _example(ex: dict[str, Any]) -> str:
    query = ex["query"] if not isinstance(ex["query"], str) or len(ex["query"]) <= 80 else ex["query"][:77] + "..."
    return f"{ex['query_id']}: {query!r}" + (f" [{ex['detail']}]" if ex.get("detail") else "")


def failure_message(summary: dict[str, Any], path: Path) -> str:
    """One line naming every failed check: its count, two example rows, what to do; then ``validation.json``.

    Args:
        summary: Output of :func:`run_suite`.
        path: Where ``validation.json`` was written.
    """
    failed = [e for e in summary["results"] if not e["success"]]
    parts = []
    for e in failed:
        if "exception" in e:
            what = "could not run: " + " ".join(str(e["exception"]).split())
        elif "observed_value" in e and not e["examples"]:
            lo, hi = e["kwargs"].get("min_value"), e["kwargs"].get("max_value")
            expected = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")
            what = f"observed {e['observed_value']}, expected {expected}"
        else:
            shown = "; ".join(_example(ex) for ex in e["examples"][:EXAMPLES_IN_MESSAGE])
            what = f"{e['unexpected_count']} row(s), e.g. {shown}" if shown else f"{e['unexpected_count']} row(s)"
        parts.append(f"{e['check']} ({what}): {FIXES.get(e['check'], 'see ' + str(path))}")
    head = f"pairs failed {len(failed)} of {len(summary['results'])} data-quality checks: "
    return head + " | ".join(parts) + f" (all rows: {path})"


def run(chunks_dir: str | Path, pairs_dir: str | Path, out_dir: str | Path, cfg: ValidateConfig) -> Manifest:
    """Validate the pairs against the chunks; write ``validation.json`` + ``manifest.json``.

    Args:
        chunks_dir: Ingest artifact folder.
        pairs_dir: SDG artifact folder.
        out_dir: Output artifact folder (created).
        cfg: Thresholds (query length, minimum pair counts, uniqueness, examples quoted).

    Returns:
        The manifest (counts: pairs, train_pairs, eval_pairs, expectations, failed_expectations, success).

    Raises:
        ValidationFailed: after both files are written, when any check failed.
        InputError: unreadable chunks/pairs.
    """
    timer = StageTimer("validate")
    chunks_dir, pairs_dir, out = Path(chunks_dir), Path(pairs_dir), Path(out_dir)
    chunks = read_chunks(chunks_dir)
    pairs = read_pairs(pairs_dir)
    df = pairs_frame(pairs, chunks)
    summary = run_suite(df, cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = out / VALIDATION_FILE
    write_json(path, summary)
    failed = [e["check"] for e in summary["results"] if not e["success"]]
    counts = {
        "pairs": len(df),
        "train_pairs": int((df["split"] == "train").sum()),
        "eval_pairs": int((df["split"] == "eval").sum()),
        "expectations": len(summary["results"]),
        "failed_expectations": len(failed),
        "success": int(summary["success"]),
    }
    manifest = timer.write_manifest(out, counts=counts, inputs={"chunks": str(chunks_dir), "pairs": str(pairs_dir)},
                                    config=cfg, success=summary["success"], failed_checks=failed)
    if not summary["success"]:
        raise ValidationFailed(failure_message(summary, path))
    log.info("validate: all %d checks passed on %d pairs", counts["expectations"], counts["pairs"])
    return manifest

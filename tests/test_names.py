"""Metric/param names per logging target (KFP run metrics, manifest counts)."""

import re

import pytest

from embedforge import names

KFP_NAME = re.compile(r"^[a-zA-Z]([-_a-zA-Z0-9]{0,62}[a-zA-Z0-9])?$")


@pytest.mark.parametrize("raw, want", [
    ("finetuned_ndcg@10", "finetuned_ndcg_at_10"), ("base_mrr@100", "base_mrr_at_100"), ("10x", "m_10x"),
    ("delta ndcg@5!", "delta_ndcg_at_5"), ("x" * 80, "x" * 64), ("@@", "at__at"),
])
def test_for_kfp(raw, want):
    assert names.for_kfp(raw) == want and KFP_NAME.match(want)


@pytest.mark.parametrize("raw, want", [("llm.qa.requests", "llm_qa_requests"), ("pairs file.jsonl", "pairs_file_jsonl"),
                                       ("__x__", "x")])
def test_for_count(raw, want):
    assert names.for_count(raw) == want

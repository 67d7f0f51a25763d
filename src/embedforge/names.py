"""Metric and parameter names made legal for each place they are logged: one function per target.

The same metric (``ndcg@10``) is logged to KFP's run-metrics table and as a manifest count; each target has its own
rule, and ``@k`` always reads ``_at_k``. MLflow keys follow the same ``_at_k`` rule in
:func:`embedforge.registry.mlflow.metric_key`.
"""

from __future__ import annotations

import re

_KFP_BAD = re.compile(r"[^-_a-zA-Z0-9]")
_IDENTIFIER_BAD = re.compile(r"[^A-Za-z0-9_]+")


def for_kfp(name: str) -> str:
    """A metric name KFP's run-metrics table accepts (``^[a-zA-Z]([-_a-zA-Z0-9]{0,62}[a-zA-Z0-9])?$``).

    ``"finetuned_ndcg@10"`` -> ``"finetuned_ndcg_at_10"``.
    """
    out = _KFP_BAD.sub("_", name.replace("@", "_at_")).strip("-_") or "metric"
    if not out[0].isalpha():
        out = "m_" + out
    return out[:64].rstrip("-_")


def for_count(name: str) -> str:
    """An identifier-like manifest count name: ``llm.qa.requests`` -> ``llm_qa_requests``."""
    return _IDENTIFIER_BAD.sub("_", name).strip("_")

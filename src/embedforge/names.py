"""Metric and parameter names made legal for each place they are logged: one function per target.

The same metric (``ndcg@10``) is logged to KFP's run-metrics table, to MLflow and as a manifest count; each target
has its own rule, and ``@k`` always reads ``_at_k``.
"""

from __future__ import annotations

import re

_KFP_BAD = re.compile(r"[^-_a-zA-Z0-9]")
#: MLflow allows alphanumerics, underscores, dashes, periods, spaces, colons and slashes in metric/param keys.
_MLFLOW_BAD = re.compile(r"[^\w\-. :/]")
_IDENTIFIER_BAD = re.compile(r"[^A-Za-z0-9_]+")


def for_kfp(name: str) -> str:
    """A metric name KFP's run-metrics table accepts (``^[a-zA-Z]([-_a-zA-Z0-9]{0,62}[a-zA-Z0-9])?$``).

    ``"finetuned_ndcg@10"`` -> ``"finetuned_ndcg_at_10"``.
    """
    out = _KFP_BAD.sub("_", name.replace("@", "_at_")).strip("-_") or "metric"
    if not out[0].isalpha():
        out = "m_" + out
    return out[:64].rstrip("-_")


def for_mlflow(name: str) -> str:
    """A legal MLflow metric/param key: ``ndcg@10`` -> ``ndcg_at_10``; other illegal characters -> ``_``."""
    return _MLFLOW_BAD.sub("_", name.replace("@", "_at_")).strip("/") or "_"


def for_count(name: str) -> str:
    """An identifier-like manifest count name: ``llm.qa.requests`` -> ``llm_qa_requests``."""
    return _IDENTIFIER_BAD.sub("_", name).strip("_")

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


# ------------------------------------------------------------------------------------- names from the config
# Settings whose value becomes a folder name (Triton's model repository), an MLflow registry name or alias, or a
# Kubernetes object name are checked when the config is loaded, so a bad one fails before the first stage with
# the field named, never as a path outside the repository or an MLflow error at the end of a run.

#: Longest Triton model name: a folder name (with ``_tokenizer`` added) and part of every inference URL.
MAX_TRITON_NAME = 100
#: Longest MLflow registered model name / alias accepted here (MLflow's own alias limit is 255).
MAX_REGISTRY_NAME = 200
_TRITON_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_REGISTRY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_K8S_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)([eE]\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def triton_model_name(value: str) -> str:
    """``value`` when it can name a Triton model: a single folder name inside the model repository.

    Letters, digits, ``_ . -``, not starting with ``.`` or ``-`` (so never ``.``, ``..`` or a hidden folder), at
    most :data:`MAX_TRITON_NAME` characters. Raises ValueError saying what is allowed.
    """
    if not _TRITON_NAME.fullmatch(value) or len(value) > MAX_TRITON_NAME:
        raise ValueError(f"{_shown(value)} is not a Triton model name: use letters, digits, '_', '.' and '-', "
                         f"starting with a letter, digit or '_' (it names a folder of the model repository), at "
                         f"most {MAX_TRITON_NAME} characters")
    return value


def registry_model_name(value: str) -> str:
    """``value`` when it can name an MLflow registered model everywhere embedforge uses it (registry, tags, lock
    names, file stores): letters, digits, ``_ . -``, not starting with ``.`` or ``-``, no ``/``, ``:`` or spaces.
    Raises ValueError saying what is allowed."""
    if not _REGISTRY_NAME.fullmatch(value) or len(value) > MAX_REGISTRY_NAME:
        raise ValueError(f"{_shown(value)} is not a registered model name: use letters, digits, '_', '.' and '-', "
                         f"starting with a letter, digit or '_' (no '/', ':' or spaces), at most "
                         f"{MAX_REGISTRY_NAME} characters")
    return value


def registry_alias(value: str) -> str:
    """``value`` when MLflow accepts it as a model alias: letters, digits, ``_`` and ``-``; not ``latest`` and not
    a version alias (``v1``, ``V12``), which MLflow reserves. Raises ValueError saying what is allowed."""
    if not _ALIAS.fullmatch(value) or len(value) > MAX_REGISTRY_NAME:
        raise ValueError(f"{_shown(value)} is not an MLflow alias: use letters, digits, '_' and '-', at most "
                         f"{MAX_REGISTRY_NAME} characters")
    if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
        raise ValueError(f"{_shown(value)} is reserved by MLflow ('latest' and version aliases like 'v1'): "
                         "choose another alias")
    return value


def experiment_name(value: str) -> str:
    """``value`` when it can name an MLflow experiment: 1 to 500 characters, no control characters (line breaks
    ...), no surrounding spaces. Raises ValueError."""
    if not value.strip() or value != value.strip() or _CONTROL.search(value) or len(value) > 500:
        raise ValueError(f"{_shown(value)} is not an experiment name: 1 to 500 characters without line breaks, "
                         "control characters or surrounding spaces")
    return value


def k8s_label(value: str) -> str:
    """``value`` when it is a Kubernetes DNS-1123 label (a namespace): lower-case letters, digits and ``-``, at most
    63 characters, starting and ending with a letter or digit. Raises ValueError."""
    if not _DNS_LABEL.fullmatch(value) or len(value) > 63:
        raise ValueError(f"{_shown(value)} is not a Kubernetes name: lower-case letters, digits and '-', starting "
                         "and ending with a letter or digit, at most 63 characters")
    return value


def k8s_name(value: str) -> str:
    """``value`` when it is a Kubernetes DNS-1123 subdomain (most object names: a claim, a training runtime):
    dot-separated labels, at most 253 characters. Raises ValueError."""
    if not _DNS_SUBDOMAIN.fullmatch(value) or len(value) > 253:
        raise ValueError(f"{_shown(value)} is not a Kubernetes object name: lower-case letters, digits, '-' and "
                         "'.', starting and ending with a letter or digit, at most 253 characters")
    return value


def k8s_quantity(value: str) -> str:
    """``value`` when it is a Kubernetes resource quantity (``8``, ``7500m``, ``32Gi``, ``1.5``). Raises ValueError."""
    if not _K8S_QUANTITY.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a Kubernetes quantity (e.g. 8, 7500m, 32Gi)")
    return value

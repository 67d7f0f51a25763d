"""The MLflow toolkit every stage and command shares: tracking URI, client, experiments, params and metrics.

Register writes with it; gate, promote, rollback, resume and the runner read with it. Nothing here imports
mlflow at module level, so importing embedforge stays cheap where MLflow is not used.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.errors import ConfigError
from embedforge.redact import REDACTED, looks_secret, redact, secret_value

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: The artifact path of a version's MLflow Model inside its run.
MODEL_ARTIFACT_PATH = "model"
#: MLflow limits (mlflow.utils.validation), repeated so this module imports without mlflow.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
_PARAM_BATCH = 100
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


#: The MLflow run id of a register stage, in its output folder as soon as the run exists.
RUN_ID_FILE = "mlflow_run_id"


# ----------------------------------------------------------------------------------------- tracking URIs
def resolve_tracking_uri(explicit: str = "", recorded: str = "") -> str:
    """Pick the MLflow tracking URI: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else ``recorded``.

    Args:
        explicit: A URI given by the caller (CLI option, component parameter, config field).
        recorded: A URI recorded by an earlier stage (``registry.json``), used as the last resort.

    Raises:
        ConfigError: None of them is set.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI", "") or (recorded if REDACTED not in recorded else "")
    if not uri:
        raise ConfigError(
            "no MLflow tracking URI: pass --tracking-uri / register.tracking_uri or set MLFLOW_TRACKING_URI "
            "(e.g. sqlite:///out/mlflow.db or http://mlflow:5000)"
        )
    return uri


def is_local_store(uri: str) -> bool:
    """True for stores that live on this machine's disk (sqlite, file:, plain paths)."""
    return urllib.parse.urlsplit(uri).scheme.lower() in ("", "file", "sqlite")


def local_artifact_root(uri: str) -> Path | None:
    """The folder where a local store's artifacts go: ``mlartifacts/`` beside the sqlite db / file store."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "sqlite":
        db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not db or db == ":memory:":
            return None
        return Path(db).expanduser().resolve().parent / "mlartifacts"
    if parts.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parts.path) if parts.scheme == "file" else uri).expanduser().resolve()
        return path.parent / "mlartifacts"
    return None


def client_for(uri: str) -> "MlflowClient":
    """An ``MlflowClient`` for tracking and registry at ``uri`` (never touches the process-global URI)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_error(action: str, uri: str, exc: Exception) -> ConfigError:
    """A one-line ConfigError for an MLflow failure that names the server and what we were doing."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"MLflow at {redact(uri)}: cannot {action}: {redact(msg[:500])}")


# ------------------------------------------------------------------------------------------ params/metrics
def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> ``{"train.epochs": "1.0", ...}``, secrets redacted, keys/values within MLflow limits.

    Args:
        tree: The pipeline configuration (``PipelineConfig.to_dict()``) or any JSON-able mapping.
        prefix: Dotted prefix for every key.

    Returns:
        Flat mapping of legal MLflow param names to string values. A key that looks secret (see
        :func:`looks_secret`), or a value shaped like a known credential, is logged as ``***``.
    """
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not looks_secret(key):
            out.update(flatten_params(v, prefix=f"{key}."))
            continue
        text = _param_value(v)
        text = REDACTED if looks_secret(key) or secret_value(text) else redact(text)
        out[metric_key(key)[:MAX_KEY_LENGTH]] = text[:MAX_PARAM_VALUE_LENGTH]
    return out


def metric_key(name: str) -> str:
    """A legal MLflow metric/param name: ``ndcg@10`` -> ``ndcg_at_10``; other illegal characters -> ``_``."""
    return _BAD_NAME_CHARS.sub("_", name.replace("@", "_at_")).strip("/") or "_"


def numeric(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def evaluation_metrics(ev: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics from ``evaluation.json``.

    ``base.<m>`` -> ``base_<m>``, ``finetuned.<m>`` -> ``finetuned_<m>``, their difference -> ``delta_<m>``;
    ``external`` (an extra BEIR collection) -> ``external_base_<m>``, ``external_finetuned_<m>``,
    ``external_delta_<m>``; ``counts.<c>`` -> ``count_<c>``. Non-finite values are skipped.

    Args:
        ev: The parsed ``evaluation.json``.
    """
    out: dict[str, float] = {}

    def add_pair(prefix: str, base: Any, fine: Any) -> None:
        base = base if isinstance(base, dict) else {}
        fine = fine if isinstance(fine, dict) else {}
        for side, values in (("base", base), ("finetuned", fine)):
            for m, v in values.items():
                if (x := numeric(v)) is not None:
                    out[metric_key(f"{prefix}{side}_{m}")] = x
        for m in base.keys() & fine.keys():
            b, f = numeric(base[m]), numeric(fine[m])
            if b is not None and f is not None:
                out[metric_key(f"{prefix}delta_{m}")] = f - b

    add_pair("", ev.get("base"), ev.get("finetuned"))
    ext = ev.get("external")
    if isinstance(ext, dict):
        add_pair("external_", ext.get("base"), ext.get("finetuned"))
    for name, v in (ev.get("counts") or {}).items():
        if (x := numeric(v)) is not None:
            out[metric_key(f"count_{name}")] = x
    return out


# ------------------------------------------------------------------------------------------- experiments
def get_or_create_experiment(client: "MlflowClient", name: str, uri: str) -> str:
    """Experiment id of ``name``, creating it (with an artifact folder beside a local store) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment {name!r} is deleted: restore it or set register.experiment to another name")
        return exp.experiment_id
    kwargs: dict[str, str] = {}
    if is_local_store(uri) and (root := local_artifact_root(uri)) is not None:
        root.mkdir(parents=True, exist_ok=True)
        kwargs["artifact_location"] = root.as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, **kwargs)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":  # created concurrently
            return client.get_experiment_by_name(name).experiment_id
        raise


def ensure_registered_model(client: "MlflowClient", name: str) -> None:
    """Create registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(name, tags={"created_by": "embedforge"},
                                       description="Fine-tuned embedding model built by embedforge.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def log_params(client: "MlflowClient", run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = sorted(params.items())
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + _PARAM_BATCH]])


def log_metrics(client: "MlflowClient", run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = sorted(metrics.items())
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in items[start:start + 1000]])

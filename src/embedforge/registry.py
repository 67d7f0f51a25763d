"""Register: one MLflow run per pipeline run, and a new version of the registered model that is a real MLflow Model.

The run carries the *effective* stage configurations (what each component received, defaults filled in, see
:func:`embedforge.provenance.effective_params`) as params (flattened to dotted keys; secret-looking keys, credential-shaped values and
credentials inside URLs redacted by :mod:`embedforge.redact`), the evaluation as metrics (``base_*``,
``finetuned_*``, ``delta_*``; ``@`` is not a legal MLflow metric character, so ``ndcg@10`` is logged as
``ndcg_at_10``), ``evaluation.json``, ``validation.json``, and under ``model/`` the version itself:

* an MLflow Model (pyfunc flavour, :mod:`embedforge.mlflow_pyfunc` logged as code) with a signature (``text``
  -> float32 embeddings, param ``prompt_name``), an input example, and the ONNX file + tokenizer as its ``onnx``
  artifact, so ``mlflow.pyfunc.load_model("models:/<name>/<version>").predict(df)`` embeds text exactly as
  Triton will;
* the fine-tuned sentence-transformers files beside ``MLmodel`` (the gate loads champions with them).

A version exists only with its record (committed after ``registry.json``; :mod:`embedforge.registry_recovery`).
In a local store the model's large files are hard links to the train/export outputs (:mod:`embedforge.disk`).

Run and version are tagged with the KFP run id, the sha256 of the run's pairs, the base model and the code
version (:func:`embedforge.provenance.provenance_tags`); what train trained with and its cost are ``train_schedule.*``
params and ``train_*`` metrics (:func:`embedforge.provenance.training_record`). The version's source is ``model/``.

Tracking URI: the argument, else ``RegisterConfig.tracking_uri``, else ``$MLFLOW_TRACKING_URI`` (the CLI passes
``sqlite:///<out>/mlflow.db``). A local store's experiment keeps its artifacts beside the database, not in ./mlruns.

Example:
    >>> from embedforge import registry
    >>> from embedforge.config import RegisterConfig
    >>> registry.run("model", "onnx", "evaluation", "validation", "registry", RegisterConfig(),
    ...              tracking_uri="sqlite:////tmp/mlflow.db", params=cfg.to_dict())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.config import RegisterConfig
from embedforge.contracts import (
    REGISTRY_FILE,
    EvaluationResult,
    Manifest,
    RegistryRecord,
    SdgResult,
    StageTimer,
    ValidationResult,
    has_manifest,
    read_manifest,
    read_result,
    report_file,
    write_json,
)
from embedforge.disk import link_identical
from embedforge.errors import ConfigError, InputError
from embedforge.mlflow_model import save_mlflow_model
from embedforge.provenance import provenance_tags, training_record
from embedforge.registry_recovery import commit, discard, pending_tags, recover
from embedforge.redact import REDACTED, looks_secret, redact, secret_value

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
ONNX_ARTIFACT_PATH = "onnx"
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


def _numeric(v: Any) -> float | None:
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
                if (x := _numeric(v)) is not None:
                    out[metric_key(f"{prefix}{side}_{m}")] = x
        for m in base.keys() & fine.keys():
            b, f = _numeric(base[m]), _numeric(fine[m])
            if b is not None and f is not None:
                out[metric_key(f"{prefix}delta_{m}")] = f - b

    add_pair("", ev.get("base"), ev.get("finetuned"))
    ext = ev.get("external")
    if isinstance(ext, dict):
        add_pair("external_", ext.get("base"), ext.get("finetuned"))
    for name, v in (ev.get("counts") or {}).items():
        if (x := _numeric(v)) is not None:
            out[metric_key(f"count_{name}")] = x
    return out


# ----------------------------------------------------------------------------------------------- helpers
def _require_dir(path: Path, what: str, must_have: str | None = None) -> None:
    if not path.is_dir():
        raise InputError(f"{what} folder {path} does not exist")
    if must_have and not (path / must_have).is_file():
        raise InputError(f"{what} folder {path} has no {must_have}")


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


def _log_params(client: "MlflowClient", run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = sorted(params.items())
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + _PARAM_BATCH]])


def _log_metrics(client: "MlflowClient", run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = sorted(metrics.items())
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in items[start:start + 1000]])


# ------------------------------------------------------------------------------------------------ stage
def run(
    model_dir: str | Path,
    onnx_dir: str | Path,
    evaluation_dir: str | Path,
    validation_dir: str | Path,
    out_dir: str | Path,
    cfg: RegisterConfig,
    tracking_uri: str,
    params: dict,
    base_model: str = "",
    pairs_dir: str | Path | None = None,
    kfp_run_id: str = "",
) -> Manifest:
    """Log one MLflow run for this pipeline run and register the model as a new version.

    Args:
        model_dir: The fine-tuned sentence-transformers folder (its files sit beside ``MLmodel`` in ``model/``).
        onnx_dir: The export folder (``model.onnx``, tokenizer files, ``parity.json``): the pyfunc's ``onnx``
            artifact (``model/artifacts/onnx/``).
        evaluation_dir: Folder holding ``evaluation.json`` (metrics: base_*, finetuned_*, delta_*).
        validation_dir: Folder holding ``validation.json`` (logged as an artifact).
        out_dir: Output folder: ``registry.json`` + ``manifest.json``.
        cfg: Registered model name, experiment name, optional tracking URI.
        tracking_uri: MLflow tracking URI; empty -> ``cfg.tracking_uri`` -> ``$MLFLOW_TRACKING_URI``.
        params: The effective pipeline configuration (nested dict, see :func:`embedforge.provenance.effective_params`), logged as
            flattened params.
        base_model: Base model name for the version's ``base_model`` tag; empty -> ``params["base_model"]``
            -> ``evaluation.json``'s ``models.base``.
        pairs_dir: The sdg output folder: its manifest counts (pairs per split and source, and for the LLM
            generator requests and prompt/completion tokens per stage) are logged as ``sdg_*`` metrics; the
            sha256 of its ``pairs.jsonl`` is the ``data_sha256`` tag.
        kfp_run_id: The KFP run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``); empty -> ``$KFP_RUN_ID``.

    Returns:
        The manifest; ``registry.json`` holds tracking_uri (password redacted), experiment_id, run_id,
        model_name, version, source, artifact_uri.

    Raises:
        ConfigError: No tracking URI, or MLflow refused/failed a request.
        InputError: An input folder or file is missing.
    """
    from mlflow.exceptions import MlflowException

    timer = StageTimer("register")
    model_dir, onnx_dir = Path(model_dir), Path(onnx_dir)
    evaluation_dir, validation_dir, out_dir = Path(evaluation_dir), Path(validation_dir), Path(out_dir)
    _require_dir(model_dir, "model", "modules.json")
    _require_dir(onnx_dir, "onnx", "model.onnx")
    _require_dir(evaluation_dir, "evaluation")
    read_result(validation_dir, ValidationResult)  # a finished validate artifact of this version
    evaluation = read_result(evaluation_dir, EvaluationResult).model_dump(mode="json")

    uri = resolve_tracking_uri(tracking_uri or cfg.tracking_uri)
    params = dict(params or {})
    models = evaluation.get("models") if isinstance(evaluation.get("models"), dict) else {}
    base_model = base_model or str(params.get("base_model", "") or models.get("base", "") or "")
    trained_with, train_metrics = training_record(model_dir)  # train_schedule.*: what the model trained with
    flat_params, metrics = flatten_params(params | trained_with), evaluation_metrics(evaluation) | train_metrics
    if pairs_dir is not None and has_manifest(pairs_dir):
        sdg_counts = read_manifest(pairs_dir, SdgResult).counts
        metrics.update({metric_key(f"sdg_{k}"): float(v) for k, v in sdg_counts.items() if isinstance(v, (int, float))})
    primary = str(evaluation.get("primary_metric") or "")
    primary_value = _numeric(evaluation["finetuned"].get(primary)) if primary else None

    client = client_for(uri)
    try:
        experiment_id = get_or_create_experiment(client, cfg.experiment, uri)
    except MlflowException as exc:
        raise mlflow_error(f"get or create experiment {cfg.experiment!r}", uri, exc) from None
    try:  # versions an earlier, killed register left without a record go first
        recover(client)
    except MlflowException as exc:
        log.warning("could not check %s for versions registered without a record: %s", redact(uri), exc)

    provenance = provenance_tags(base_model, kfp_run_id, pairs_dir)
    run_tags = {"embedforge.stage": "register", "embedforge.model_name": cfg.model_name, **pending_tags(),
                **{f"embedforge.{k}": v for k, v in provenance.items()}}
    if primary:
        run_tags["embedforge.primary_metric"] = primary
    try:
        mlrun = client.create_run(experiment_id, tags=run_tags)
    except MlflowException as exc:
        raise mlflow_error(f"create a run in experiment {cfg.experiment!r}", uri, exc) from None
    run_id = mlrun.info.run_id
    # Written before anything is logged: a run interrupted from here on can be found and marked KILLED (runner).
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_ID_FILE).write_text(run_id, encoding="utf-8")
    artifact_uri = mlrun.info.artifact_uri
    log.info("MLflow run %s in experiment %s (%s)", run_id, cfg.experiment, redact(uri))
    try:
        _log_params(client, run_id, flat_params)
        _log_metrics(client, run_id, metrics)
        with tempfile.TemporaryDirectory(prefix="embedforge-mlflow-model-") as tmp:
            mlmodel_dir = save_mlflow_model(model_dir, onnx_dir, Path(tmp) / MODEL_ARTIFACT_PATH,
                                            metadata={**provenance, "run_id": run_id})
            client.log_artifacts(run_id, str(mlmodel_dir), MODEL_ARTIFACT_PATH)
        if artifact_uri.startswith("file://"):  # local store: share the bytes with the stage outputs, not copy
            link_identical(Path(urllib.parse.unquote(urllib.parse.urlsplit(artifact_uri).path)) / MODEL_ARTIFACT_PATH,
                           [model_dir, onnx_dir])
        client.log_artifact(run_id, str(report_file(evaluation_dir, EvaluationResult)))
        client.log_artifact(run_id, str(report_file(validation_dir, ValidationResult)))

        ensure_registered_model(client, cfg.model_name)
        source = f"{artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
        version_tags = {**provenance, "run_id": run_id}
        if primary:
            version_tags["primary_metric"] = primary
            if primary_value is not None:
                version_tags["primary_metric_value"] = f"{primary_value:.6f}"
            b = _numeric((evaluation.get("base") or {}).get(primary))
            if b is not None:
                version_tags["base_metric_value"] = f"{b:.6f}"
        mv = client.create_model_version(
            cfg.model_name, source, run_id=run_id, tags=version_tags,
            description=f"embedforge run {run_id}" + (f"; {primary}={primary_value:.4f}" if primary_value is not None else ""),
        )
        client.set_tag(run_id, "embedforge.registered_version", str(mv.version))
    except MlflowException as exc:
        _discard(client, run_id)
        raise mlflow_error(f"log run {run_id} / register {cfg.model_name!r}", uri, exc) from None
    except BaseException:
        _discard(client, run_id)
        raise

    record = RegistryRecord(
        tracking_uri=redact(uri),
        experiment_id=experiment_id,
        experiment=cfg.experiment,
        run_id=run_id,
        model_name=cfg.model_name,
        version=str(mv.version),
        source=source,
        artifact_uri=artifact_uri,
        primary_metric=primary,
        primary_metric_value=primary_value,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / REGISTRY_FILE, record.model_dump(mode="json"))
    log.info("registered %s version %s (source %s)", cfg.model_name, mv.version, source)
    config = cfg.model_dump(mode="json")
    config["tracking_uri"] = redact(config.get("tracking_uri", ""))
    manifest = timer.write_manifest(
        out_dir,
        counts={"params": len(flat_params), "metrics": len(metrics), "version": int(mv.version)},
        inputs={"model": model_dir, "onnx": onnx_dir, "evaluation": evaluation_dir, "validation": validation_dir},
        config=config,
        result=record,
    )
    try:  # the record exists: commit
        commit(client, run_id)
    except MlflowException as exc:
        raise mlflow_error(f"commit run {run_id} (its record is written)", uri, exc) from None
    return manifest


def _discard(client: "MlflowClient", run_id: str) -> None:
    """Best effort: delete the failed run's version (it has no record), mark the run FAILED; the error is re-raised."""
    from mlflow.exceptions import MlflowException

    try:
        discard(client, run_id, status="FAILED")
    except MlflowException as exc:  # the server may be the very thing that failed; the next recover() retries
        log.warning("could not clean up MLflow run %s: %s", run_id, exc)


def read_registry(registry_dir: str | Path) -> RegistryRecord:
    """The registered version recorded in a register output folder."""
    return read_result(registry_dir, RegistryRecord)


__all__ = [
    "evaluation_metrics", "flatten_params", "metric_key", "read_registry", "resolve_tracking_uri", "run",
]

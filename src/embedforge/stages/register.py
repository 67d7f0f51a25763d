"""Register: one MLflow run per pipeline run, and a new version of the registered model that is a real MLflow Model.

The run carries the *effective* stage configurations (what each component received, defaults filled in, see
:func:`embedforge.registry.provenance.effective_params`) as params (flattened to dotted keys; secret-looking keys, credential-shaped values and
credentials inside URLs redacted by :mod:`embedforge.redact`), the evaluation as metrics (``base_*``,
``finetuned_*``, ``delta_*``; ``@`` is not a legal MLflow metric character, so ``ndcg@10`` is logged as
``ndcg_at_10``), ``evaluation.json``, ``validation.json``, and under ``model/`` the version itself:

* an MLflow Model (pyfunc flavour, :mod:`embedforge.registry.pyfunc` logged as code) with a signature (``text``
  -> float32 embeddings, param ``prompt_name``), an input example, and the ONNX file + tokenizer as its ``onnx``
  artifact, so ``mlflow.pyfunc.load_model("models:/<name>/<version>").predict(df)`` embeds text exactly as
  Triton will;
* the fine-tuned sentence-transformers files beside ``MLmodel`` (the gate loads champions with them);
* ``README.md``, the model card (:mod:`embedforge.registry.model_card`), whose text is also the version's
  description.

A version exists only with its record (committed after ``registry.json``; :mod:`embedforge.registry.recovery`).
In a local store the model's large files are hard links to the train/export outputs (:mod:`embedforge.disk`).

The train step's own MLflow run (per-step loss, learning rate, throughput, system metrics;
:mod:`embedforge.registry.live_run`), tagged with the same KFP run id, becomes this run's child.

Run and version are tagged with the KFP run id, the sha256 of the run's pairs, the base model and the code
version (:func:`embedforge.registry.provenance.provenance_tags`); what train trained with and its cost are ``train_schedule.*``
params and ``train_*`` metrics (:func:`embedforge.registry.provenance.training_record`). The version's source is ``model/``.

Tracking URI: the argument, else ``RegisterConfig.tracking_uri``, else ``$MLFLOW_TRACKING_URI`` (the CLI passes
``sqlite:///<out>/mlflow.db``). A local store's experiment keeps its artifacts beside the database, not in ./mlruns.

Example:
    >>> from embedforge import registry
    >>> from embedforge.config import RegisterConfig
    >>> registry.run("model", "onnx", "evaluation", "validation", "registry", RegisterConfig(),
    ...              tracking_uri="sqlite:////tmp/mlflow.db", params=cfg.to_dict())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

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
from embedforge.errors import InputError
from embedforge.redact import redact
from embedforge.registry.live_run import adopt_train_runs
from embedforge.registry.mlflow import (
    MODEL_ARTIFACT_PATH,
    RUN_ID_FILE,
    client_for,
    ensure_registered_model,
    evaluation_metrics,
    flatten_params,
    get_or_create_experiment,
    log_metrics,
    log_params,
    metric_key,
    mlflow_error,
    numeric,
    resolve_tracking_uri,
)
from embedforge.registry.model import save_mlflow_model
from embedforge.registry.model_card import build_card, description, write_card
from embedforge.registry.provenance import provenance_tags, training_record
from embedforge.registry.recovery import commit, discard, pending_tags, recover

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

def _require_dir(path: Path, what: str, must_have: str | None = None) -> None:
    if not path.is_dir():
        raise InputError(f"{what} folder {path} does not exist")
    if must_have and not (path / must_have).is_file():
        raise InputError(f"{what} folder {path} has no {must_have}")



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
        params: The effective pipeline configuration (nested dict, see :func:`embedforge.registry.provenance.effective_params`), logged as
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
        MlflowStoreError: A local sqlite store that cannot be used (damaged, not a database).
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
    primary_value = numeric(evaluation["finetuned"].get(primary)) if primary else None

    client = client_for(uri, check_integrity=True)  # a damaged local store: one line naming it, not a traceback
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
    try:  # the train step's live run (per-step metrics) becomes this pipeline run's child
        adopt_train_runs(client, [experiment_id], provenance.get("kfp_run_id", ""), run_id)
    except MlflowException as exc:
        log.warning("could not link the train run of KFP run %s to MLflow run %s: %s", provenance.get("kfp_run_id"),
                    run_id, exc)
    try:
        card = build_card(model_dir, evaluation_dir, cfg.model_name, base_model=base_model, run_id=run_id,
                          validation_dir=validation_dir, pairs_dir=pairs_dir)
        log_params(client, run_id, flat_params)
        log_metrics(client, run_id, metrics)
        with tempfile.TemporaryDirectory(prefix="embedforge-mlflow-model-") as tmp:
            mlmodel_dir = save_mlflow_model(model_dir, onnx_dir, Path(tmp) / MODEL_ARTIFACT_PATH,
                                            metadata={**provenance, "run_id": run_id})
            write_card(mlmodel_dir, card)  # replaces the card sentence-transformers may have saved
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
            b = numeric((evaluation.get("base") or {}).get(primary))
            if b is not None:
                version_tags["base_metric_value"] = f"{b:.6f}"
        mv = client.create_model_version(
            cfg.model_name, source, run_id=run_id, tags=version_tags,
            description=description(card),
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

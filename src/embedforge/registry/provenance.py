"""Provenance of a registered version: the configuration it was built with and where it came from.

* :func:`effective_params`: the stage configs the pipeline passed to the stages, validated into one
  ``PipelineConfig`` tree (defaults filled in), so what MLflow shows is what ran, also after a submit-time override;
* :func:`provenance_tags`: ``kfp_run_id``, ``data_sha256`` (of the run's ``pairs.jsonl``), ``base_model`` and
  ``code_version``, set on the MLflow run, the model version and the MLflow Model's metadata;
* :func:`training_record`: what the train stage actually trained with and what it cost,
  from the model folder's train manifest — with ``train.schedule=auto`` the learning rate, temperature, epochs and
  augmentation rows are chosen per run, so the configured ``train.*`` params alone would misstate them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from embedforge.contracts import (
    PAIRS_FILE,
    TrainResult,
    has_manifest,
    read_manifest,
    sha256_file,
)
from embedforge.errors import ConfigError
from embedforge.redact import redact


def effective_params(base_model: str, prompts: dict, stage_configs: dict[str, dict]) -> dict[str, Any]:
    """The pipeline configuration the stages actually ran with, as one nested dict for :func:`flatten_params`.

    ``stage_configs`` maps a ``PipelineConfig`` section (``ingest``, ``train``, ``register``, ...) to the dict
    that stage's component received; each is validated through ``PipelineConfig`` so the logged values include
    the defaults the stage applied. A config overridden at submit time is therefore what MLflow shows.

    Raises:
        ConfigError: A stage config does not validate (names the field).
    """
    from pydantic import ValidationError

    from embedforge.config import PipelineConfig

    tree = {"base_model": base_model, "prompts": prompts or {}, **{k: v or {} for k, v in stage_configs.items()}}
    try:
        return PipelineConfig.model_validate(tree).to_dict()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"register received stage configs that do not validate: {problems}") from None


def code_version() -> str:
    """embedforge's version, plus the image's git commit when the build recorded it (``$EMBEDFORGE_GIT_SHA``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("embedforge")
    except PackageNotFoundError:
        v = "unknown"
    sha = os.environ.get("EMBEDFORGE_GIT_SHA", "").strip()
    return f"{v}+g{sha[:12]}" if sha else v


def data_sha256(pairs_dir: str | Path | None) -> str:
    """sha256 of the run's pairs file (``pairs.jsonl``: the training and held-out data, derived from the corpus)."""
    if pairs_dir is None or not (Path(pairs_dir) / PAIRS_FILE).is_file():
        return ""
    return sha256_file(Path(pairs_dir) / PAIRS_FILE)


def provenance_tags(base_model: str, kfp_run_id: str, pairs_dir: str | Path | None) -> dict[str, str]:
    """Tags for the run and the version: ``kfp_run_id``, ``data_sha256``, ``base_model``, ``code_version``.

    ``kfp_run_id``: the argument (the pipeline passes ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), else ``$KFP_RUN_ID``;
    empty ones are left out (e.g. the standalone CLI).
    """
    tags = {
        "kfp_run_id": kfp_run_id or os.environ.get("KFP_RUN_ID", ""),
        "data_sha256": data_sha256(pairs_dir),
        "base_model": base_model or "unknown",
        "code_version": code_version(),
    }
    return {k: redact(v) for k, v in tags.items() if v}


__all__ = ["code_version", "data_sha256", "effective_params", "provenance_tags"]


def training_record(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, float]]:
    """What the train stage that wrote ``model_dir`` trained with and what it cost, from its manifest (read once):

    * params ``{"train_schedule": {...}}``: the schedule it trained with (mode, learning_rate, temperature, epochs,
      augment, reason), for :func:`~embedforge.stages.register.flatten_params`;
    * metrics: ``train_seconds`` (the final run), ``train_probe_seconds`` and ``train_probe_steps`` (the auto
      schedule's search; 0 without one), ``train_reused_probes`` and ``train_resumed_from_step`` (what a rerun of an
      interrupted step took over instead of training again), ``train_examples_per_second``, ``train_final_loss`` and its counts as
      ``train_<count>``.

    Both empty for a model folder no train stage wrote (a base model)."""
    if not has_manifest(model_dir):
        return {}, {}
    m = read_manifest(model_dir, TrainResult)
    r, choice = m.result, m.result.schedule
    params = {} if choice is None else {"train_schedule": choice.model_dump(
        mode="json", include={"mode", "learning_rate", "temperature", "epochs", "augment", "reason"})}
    metrics = {"train_seconds": r.train_seconds, "train_examples_per_second": r.examples_per_second,
               "train_final_loss": r.final_loss, "train_probe_seconds": choice.probe_seconds if choice else 0.0,
               "train_probe_steps": choice.probe_steps if choice else 0,
               "train_reused_probes": choice.reused_probes if choice else 0,
               "train_resumed_from_step": r.resumed_from_step}
    metrics.update({f"train_{k}": v for k, v in m.counts.items() if isinstance(v, (int, float))})
    return params, {k: float(v) for k, v in metrics.items()}

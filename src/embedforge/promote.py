"""Promote: point the registered model's alias at the new version and publish it as a Triton model version.

Runs only when the gate said "promote" (the pipeline branches with ``dsl.If``), and re-checks ``decision.json``
itself: a decision with ``promote: false``, or one about another version than ``registry.json``'s, is refused.

Steps: ``set_registered_model_alias(model_name, cfg.alias, version)``; tag the version (``promoted_at``,
``promoted_alias``, the metric and its value, the previous champion); write the Triton repository
(:mod:`embedforge.triton`) with the registry version as Triton version; write ``promotion.json``
(promoted, alias, version, triton_repo, model_name, ...) and ``manifest.json`` at the repository root (Triton
ignores plain files there).

Example:
    >>> from embedforge import promote
    >>> from embedforge.config import GateConfig, TritonConfig
    >>> promote.run("decision", "registry", "onnx", "triton_repo", GateConfig(), TritonConfig(),
    ...             tracking_uri="sqlite:////tmp/mlflow.db")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from embedforge.config import GateConfig, TritonConfig
from embedforge.contracts import PROMOTION_FILE, Manifest, PromotionRecord, StageTimer, write_json
from embedforge.errors import InputError

log = logging.getLogger(__name__)



def run(
    decision_dir: str | Path,
    registry_dir: str | Path,
    onnx_dir: str | Path,
    out_dir: str | Path,
    cfg: GateConfig,
    triton: TritonConfig,
    tracking_uri: str,
) -> Manifest:
    """Set ``cfg.alias`` on the gated version and write the Triton model repository into ``out_dir``.

    Args:
        decision_dir: The gate's folder holding ``decision.json``; must say ``promote: true``.
        registry_dir: The register stage's folder holding ``registry.json`` (model name, version, run id).
        onnx_dir: The export folder (``model.onnx``, tokenizer files).
        out_dir: Triton repository root: ``<triton.model_name>/config.pbtxt``,
            ``<triton.model_name>/<version>/model.onnx``, plus ``promotion.json`` and ``manifest.json``.
        cfg: Gate settings (the alias to move).
        triton: Triton settings (model name, batching, instance kind).
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` -> the one in ``registry.json``.

    Returns:
        The manifest.

    Raises:
        InputError: The decision says not to promote, or it is about another version.
        ConfigError: No tracking URI, MLflow failed, or the Triton configuration does not validate.
    """
    from mlflow.exceptions import MlflowException

    from embedforge.gate import current_champion, read_decision
    from embedforge.registry import client_for, mlflow_error, read_registry, resolve_tracking_uri
    from embedforge.triton import write_model_repository

    timer = StageTimer("promote")
    out_dir = Path(out_dir)
    decision = read_decision(decision_dir)
    reg = read_registry(registry_dir)
    model_name, version = reg.model_name, reg.version
    if not decision.promote:
        raise InputError(f"the gate decision in {decision_dir} says not to promote ({decision.reason}); "
                         "promote refuses to move the alias")
    if decision.challenger_version is not None and str(decision.challenger_version) != version:
        raise InputError(f"decision.json is about version {decision.challenger_version} but registry.json "
                         f"registered version {version}: both must come from the same pipeline run")
    if decision.alias and decision.alias != cfg.alias:
        raise InputError(f"the gate compared against alias {decision.alias!r} but promote would set {cfg.alias!r}: "
                         "use the same gate config for both stages")

    uri = resolve_tracking_uri(tracking_uri, recorded=reg.tracking_uri)
    client = client_for(uri)
    params = {"registered_model": model_name, "registered_version": version,
              "mlflow_run_id": reg.run_id, "alias": cfg.alias}
    version_dir = write_model_repository(onnx_dir, out_dir, triton, version, parameters=params)
    rollout = _publish(onnx_dir, triton, version, params) if triton.repository_dir else None

    promoted_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        previous = current_champion(client, model_name, cfg.alias)
        client.set_registered_model_alias(model_name, cfg.alias, version)
        tags = {
            "promoted_at": promoted_at,
            "promoted_alias": cfg.alias,
            "promoted_metric": decision.metric,
            "promoted_metric_value": f"{decision.challenger:.6f}",
            "promoted_over": f"v{previous}" if previous and previous != version else "none",
        }
        if rollout is not None:
            tags["served_by"] = f"{triton.server_url} ({triton.model_name} v{version})"
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
    except MlflowException as exc:
        raise mlflow_error(f"set alias {cfg.alias!r} of {model_name!r} to version {version}", uri, exc) from None
    log.info("%s@%s -> version %s (was %s)", model_name, cfg.alias, version, previous or "unset")

    record = PromotionRecord(**{
        "promoted": True,
        "alias": cfg.alias,
        "version": version,
        "previous_version": previous,
        "model_name": model_name,
        "triton_model_name": triton.model_name,
        "triton_repo": str(out_dir),
        "triton_version_dir": str(version_dir),
        "metric": decision.metric,
        "value": decision.challenger,
        "promoted_at": promoted_at,
        "reason": decision.reason,
        "published_to": triton.repository_dir or None,
        "rollout": rollout.as_dict() if rollout is not None else None,
    })
    write_json(out_dir / PROMOTION_FILE, record.model_dump(mode="json"))
    return timer.write_manifest(
        out_dir,
        counts={"version": int(version), "version_files": len(list(version_dir.iterdir()))},
        inputs={"decision": decision_dir, "registry": registry_dir, "onnx": onnx_dir},
        config={"gate": cfg.model_dump(mode="json"), "triton": triton.model_dump(mode="json")},
        result=record,
    )


def _publish(onnx_dir: str | Path, triton: TritonConfig, version: str, params: dict[str, str]):
    """Write the version into the live repository; with ``triton.server_url``, roll it out and verify it there.

    On a failed rollout the version folder is removed and the previous ``config.pbtxt`` restored (the server keeps
    or returns to the previous version), then the :class:`~embedforge.errors.ServingError` propagates, so the alias
    is never moved to a version the server does not serve.
    """
    import shutil

    from embedforge import serving
    from embedforge.errors import ServingError
    from embedforge.triton import CONFIG_FILE, atomic_write_text, write_model_repository

    live = Path(triton.repository_dir)
    model_dir = live / triton.model_name
    config = model_dir / CONFIG_FILE
    previous_config = config.read_text(encoding="utf-8") if config.is_file() else None
    existed = (model_dir / str(int(version))).exists()
    version_dir = write_model_repository(onnx_dir, live, triton, version, parameters=params)
    log.info("published %s version %s into %s", triton.model_name, version, live)
    if not triton.server_url:
        return None
    try:
        return serving.roll_out(triton.server_url, live, triton.model_name, version, timeout_s=triton.ready_timeout_s)
    except ServingError:
        if not existed:
            shutil.rmtree(version_dir, ignore_errors=True)
        if previous_config is not None:
            atomic_write_text(config, previous_config)
        elif not existed:
            config.unlink(missing_ok=True)
        serving.reload(triton.server_url, triton.model_name)
        log.error("rolled back: %s version %s removed from %s", triton.model_name, version, live)
        raise

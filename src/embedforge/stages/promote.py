"""Promote: publish the gated version to Triton, make every replica serve it, then move the alias — atomically.

Runs only when the gate said "promote" (the pipeline branches with ``dsl.If``), and re-checks ``decision.json``
itself: a decision with ``promote: false``, or one about another version than ``registry.json``'s, is refused.

Steps:

1. **compare**: the registry's ``champion`` must still be the version the gate compared against
   (``decision.champion_version``), else "another run promoted vN meanwhile; re-run the gate" — two runs that
   both beat the old champion cannot both move the alias;
2. write the Triton repository (:mod:`embedforge.serving.repository`: ensemble, tokenizer, embedder) into ``out_dir``, and,
   with ``triton.repository_dir``, stage the version in the live repository and — with ``triton.server_url`` —
   roll it out to every replica and probe each (:func:`embedforge.serving.rollout.serve`); a failed rollout leaves the
   previous version served and the step fails before any alias moves;
3. **swap**: compare again, then ``champion`` -> the new version and ``previous`` -> the old champion, and tag the
   version (``promoted_at``, metric, ``promoted_over``, ``served_by``). If the compare fails now or MLflow
   refuses the move, the live repository and every replica are put back on the version the registry's
   champion names, so serving and registry never disagree.

MLflow has no conditional alias update: the compare and the swap are two calls, milliseconds apart, after a
rollout that took seconds; the compare catches the realistic race (two pipeline runs promoting in the same
minutes), not two writers within the same milliseconds.

``promotion.json`` (promoted, alias, version, rollout, ...) and ``manifest.json`` are written at the repository
root (Triton ignores plain files there).

Example:
    >>> from embedforge import promote
    >>> from embedforge.config import GateConfig, TritonConfig
    >>> promote.run("decision", "registry", "onnx", "triton_repo", TritonConfig(),
    ...             tracking_uri="sqlite:////tmp/mlflow.db")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from embedforge.config import GateConfig, TritonConfig
from embedforge.contracts import (
    PROMOTION_FILE,
    Decision,
    Manifest,
    PromotionRecord,
    RegistryRecord,
    StageTimer,
    read_result,
    write_json,
)
from embedforge.errors import InputError
from embedforge.registry.aliases import PromotionConflict, check_champion, move_alias
from embedforge.registry.lock import promotion_lock

log = logging.getLogger(__name__)

def _read_inputs(decision_dir: str | Path, registry_dir: str | Path):
    """The gate's ``Decision`` and the register stage's ``RegistryRecord`` (model name, version, run, tracking URI)."""
    return read_result(decision_dir, Decision), read_result(registry_dir, RegistryRecord)


def run(
    decision_dir: str | Path,
    registry_dir: str | Path,
    onnx_dir: str | Path,
    out_dir: str | Path,
    cfg: TritonConfig,
    tracking_uri: str,
) -> Manifest:
    """Move the alias the gate decided on (``decision.alias``) to the gated version; write, and with
    ``cfg.repository_dir`` publish and roll out, the Triton model repository.

    Args:
        decision_dir: The gate's folder holding ``decision.json``; must say ``promote: true``.
        registry_dir: The register stage's folder holding ``registry.json`` (model name, version, run id).
        onnx_dir: The export folder (``model.onnx``, tokenizer files).
        out_dir: Triton repository root: ``<model_name>/config.pbtxt``,
            ``<model_name>/<version>/model.onnx``, plus ``promotion.json`` and ``manifest.json``.
        cfg: Triton settings (model name, batching, instance kind; repository_dir and server_url: publish into
            the live repository and roll out before the alias moves).
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` -> the one in ``registry.json``.

    Returns:
        The manifest.

    Raises:
        InputError: The decision says not to promote, or it is about another version.
        ConfigError: No tracking URI, MLflow failed, or the Triton configuration does not validate.
    """
    from mlflow.exceptions import MlflowException

    from embedforge.registry.mlflow import (
        client_for,
        mlflow_error,
        resolve_tracking_uri,
    )
    from embedforge.serving.repository import prune_versions, write_model_repository

    timer = StageTimer("promote")
    out_dir = Path(out_dir)
    decision, reg = _read_inputs(decision_dir, registry_dir)
    model_name, version = reg.model_name, str(reg.version)
    if not decision.promote:
        raise InputError(f"the gate decision in {decision_dir} says not to promote ({decision.reason}); "
                         "promote refuses to move the alias")
    if decision.challenger_version is not None and str(decision.challenger_version) != version:
        raise InputError(f"decision.json is about version {decision.challenger_version} but registry.json "
                         f"registered version {version}: both must come from the same pipeline run")
    alias = decision.alias or GateConfig().alias  # the alias the gate read the champion from

    uri = resolve_tracking_uri(tracking_uri, recorded=reg.tracking_uri)
    # no other promotion or rollback of this model reads or writes the alias or the live repository meanwhile
    with promotion_lock(model_name, uri, cfg.repository_dir):
        client = client_for(uri)
        expected = str(decision.champion_version) if decision.champion_version else None
        try:
            check_champion(client, model_name, alias, expected, version)
        except MlflowException as exc:
            raise mlflow_error(f"read alias {alias!r} of {model_name!r}", uri, exc) from None
        params = {"registered_model": model_name, "registered_version": version,
                  "mlflow_run_id": reg.run_id, "alias": alias}
        version_dir = write_model_repository(onnx_dir, out_dir, cfg, version, parameters=params)
        served_before = _served(cfg)
        rollout = _publish(onnx_dir, cfg, version, params) if cfg.repository_dir else None

        promoted_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            previous = check_champion(client, model_name, alias, expected, version)
            move_alias(client, model_name, alias, version, previous)
        except (MlflowException, PromotionConflict) as exc:
            if cfg.repository_dir:
                _restore_registry_state(client, model_name, alias, cfg, served_before)
            if isinstance(exc, PromotionConflict):
                raise
            raise mlflow_error(f"set alias {alias!r} of {model_name!r} to version {version}", uri, exc) from None
        try:
            tags = {
                "promoted_at": promoted_at,
                "promoted_alias": alias,
                "promoted_metric": decision.metric,
                "promoted_metric_value": f"{decision.challenger:.6f}",
                "promoted_over": f"v{previous}" if previous and previous != version else "none",
            }
            if rollout is not None:
                tags["served_by"] = ", ".join(f"{r.url} ({cfg.model_name} v{version})" for r in rollout.replicas)
            for key, value in tags.items():
                client.set_model_version_tag(model_name, version, key, value)
        except MlflowException as exc:
            raise mlflow_error(f"tag {model_name!r} version {version}", uri, exc) from None
        log.info("%s@%s -> version %s (was %s)", model_name, alias, version, previous or "unset")
        if cfg.repository_dir:  # still under the lock: no other promotion is staging a version meanwhile
            pruned = prune_versions(cfg.repository_dir, cfg.model_name, {version, previous or ""}, cfg.keep_versions)
            if pruned:
                log.info("deleted versions %s of %s from %s (triton.keep_versions=%d)", ", ".join(pruned),
                         cfg.model_name, cfg.repository_dir, cfg.keep_versions)

        record = PromotionRecord(**{
            "promoted": True,
            "alias": alias,
            "version": version,
            "previous_version": previous,
            "model_name": model_name,
            "triton_model_name": cfg.model_name,
            "triton_repo": str(out_dir),
            "triton_version_dir": str(version_dir),
            "metric": decision.metric,
            "value": decision.challenger,
            "promoted_at": promoted_at,
            "reason": decision.reason,
            "published_to": cfg.repository_dir or None,
            "rollout": rollout.as_dict() if rollout is not None else None,
        })
        write_json(out_dir / PROMOTION_FILE, record.model_dump(mode="json"))
    return timer.write_manifest(
        out_dir,
        counts={"version": int(version), "version_files": len(list(version_dir.iterdir()))},
        inputs={"decision": decision_dir, "registry": registry_dir, "onnx": onnx_dir},
        config={"triton": cfg.model_dump(mode="json"), "alias": alias},
        result=record,
    )


def _served(triton: TritonConfig) -> str | None:
    from embedforge.serving.repository import served_version

    return served_version(triton.repository_dir, triton.model_name) if triton.repository_dir else None


def _publish(onnx_dir: str | Path, triton: TritonConfig, version: str, params: dict[str, str]):
    """Stage the version in the live repository; serve it (and, with ``server_url``, roll it out and verify it).

    On a failed rollout every replica is back on the previous version (:func:`embedforge.serving.rollout.serve`) and the
    version's folders are removed again when this run created them, then the ServingError propagates, so the
    alias is never moved to a version the servers do not serve.
    """
    import shutil

    from embedforge.errors import ServingError
    from embedforge.serving import rollout as serving
    from embedforge.serving.repository import ModelNames, write_model_repository

    live = Path(triton.repository_dir)
    names = ModelNames.of(triton.model_name).all()
    created = [live / n / version for n in names if not (live / n / version).exists()]
    write_model_repository(onnx_dir, live, triton, version, parameters=params, serve=False)
    log.info("staged %s version %s in %s", triton.model_name, version, live)
    try:
        return serving.serve(triton, version)
    except ServingError:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        log.error("%s version %s taken out of %s again", triton.model_name, version, live)
        raise


def _restore_registry_state(client, model_name: str, alias: str, triton: TritonConfig, served_before: str | None):
    """After a failed alias move: serve what the registry's champion names (else what was served before)."""
    from embedforge.registry.aliases import current_champion
    from embedforge.serving import rollout as serving
    from embedforge.serving.repository import ModelNames

    try:
        champion = current_champion(client, model_name, alias)
    except Exception:  # noqa: BLE001 - the registry is what failed; fall back to the state before this run
        champion = None
    live = Path(triton.repository_dir)
    in_repo = champion and all((live / n / champion).is_dir() for n in ModelNames.of(triton.model_name).all())
    serving.restore(triton, champion if in_repo else served_before)

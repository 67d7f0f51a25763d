"""Rollback: move the registered model's ``champion`` back and make every Triton replica serve that version.

``embedforge rollback --model NAME [--to VERSION]``: the target is ``--to``, else the ``previous`` alias that
promotion (and every rollback) keeps. Order, as in promotion: the target's folders must be in the live model
repository (promotion left them there), every replica is switched to it and probed with the same probe
(:func:`embedforge.serving.rollout.serve`), and only then ``champion`` -> target and ``previous`` -> the version rolled
back from (so a second rollback goes forward again). A failed rollout leaves the registry and the replicas on
the current champion; a failed alias move puts the replicas back on it.

Example:
    >>> from embedforge import rollback
    >>> from embedforge.config import TritonConfig
    >>> rollback.run("embedforge-embedder", TritonConfig(repository_dir="/models",
    ...              server_url="http://triton:8000"), tracking_uri="http://mlflow:5000")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import BaseModel

from embedforge.config import TritonConfig
from embedforge.errors import InputError

log = logging.getLogger(__name__)


class RollbackResult(BaseModel):
    """What a rollback did: the version now served and named by ``alias``, and the per-replica rollout."""

    model_name: str
    alias: str
    version: str
    rolled_back_from: str | None
    rollout: dict[str, Any] | None


def run(model_name: str, triton: TritonConfig, tracking_uri: str = "", to_version: str | None = None,
        alias: str = "champion") -> RollbackResult:
    """Serve ``to_version`` (default: the ``previous`` alias) on every replica, then move ``alias`` to it.

    Args:
        model_name: Registered model name.
        triton: Triton settings: ``repository_dir`` (required), ``model_name``, ``server_url``/``replica_urls``.
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI``.
        to_version: Target version; None -> the version the ``previous`` alias names.
        alias: The alias serving follows.

    Raises:
        InputError: No target (no ``previous`` alias and no ``--to``), an unknown version, or a version whose
            folders are not in the live repository.
        ServingError: A replica could not serve the target (everything stays on the current champion).
        ConfigError: MLflow failed (the replicas are back on the current champion).
    """
    from mlflow.exceptions import MlflowException

    from embedforge.registry.aliases import PREVIOUS_ALIAS, current_champion, move_alias
    from embedforge.registry.lock import promotion_lock
    from embedforge.registry.mlflow import (
        client_for,
        mlflow_error,
        resolve_tracking_uri,
    )
    from embedforge.serving import rollout as serving

    if not triton.repository_dir:
        raise InputError("rollback needs triton.repository_dir (--set triton.repository_dir=DIR): the model repository Triton serves")
    uri = resolve_tracking_uri(tracking_uri)
    with promotion_lock(model_name, uri, triton.repository_dir):  # no promotion moves the alias meanwhile
        client = client_for(uri)
        try:
            current = current_champion(client, model_name, alias)
            target = str(to_version) if to_version else current_champion(client, model_name, PREVIOUS_ALIAS)
            if target is None:
                raise InputError(f"{model_name} has no {PREVIOUS_ALIAS!r} alias to roll back to; pass --to VERSION")
            client.get_model_version(model_name, target)  # raises for an unknown version
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise InputError(f"{model_name} has no version {to_version}: pass --to with a registered version "
                                 f"(the champion is v{current})") from None
            raise mlflow_error(f"read versions of {model_name!r}", uri, exc) from None
        if target == current:
            log.info("%s@%s is already v%s: re-checking that it is served", model_name, alias, target)

        rollout = serving.serve(triton, target)
        try:
            move_alias(client, model_name, alias, target, current)
            client.set_model_version_tag(model_name, target, "rolled_back_at",
                                         dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            if current and current != target:
                client.set_model_version_tag(model_name, current, "rolled_back_to", f"v{target}")
        except MlflowException as exc:
            if current:
                serving.restore(triton, current)
            raise mlflow_error(f"move alias {alias!r} of {model_name!r} to v{target}", uri, exc) from None
    log.info("%s@%s -> v%s (was v%s); served: %s", model_name, alias, target, current,
             "yes" if rollout else "repository only")
    return RollbackResult(model_name=model_name, alias=alias, version=target, rolled_back_from=current,
                          rollout=rollout.as_dict() if rollout else None)

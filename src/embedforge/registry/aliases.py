"""Aliases of a registered model: who the champion is, and moving it with a compare first.

Gate asks :func:`current_champion`; promote and rollback move ``champion`` with :func:`check_champion` then
:func:`move_alias`, which also points ``previous`` at the version it replaced (what ``embedforge rollback`` goes
back to). MLflow has no conditional alias update, so the compare and the move are two calls.
"""

from __future__ import annotations

from pathlib import Path

from embedforge.errors import InputError

#: The alias that keeps the champion a promotion or rollback replaced (``embedforge rollback`` goes back to it).
PREVIOUS_ALIAS = "previous"


class PromotionConflict(InputError):
    """The champion moved since the gate compared against it."""


def check_champion(client, model_name: str, alias: str, expected: str | None, version: str) -> str | None:
    """The current champion, if it is still ``expected`` (or already ``version``); else PromotionConflict."""
    current = current_champion(client, model_name, alias)
    if current is None and expected is not None:
        raise PromotionConflict(f"{model_name}@{alias} was removed meanwhile (the gate compared v{version} against "
                                f"v{expected}); re-run the gate")
    if current not in (expected, version):
        raise PromotionConflict(
            f"another run promoted v{current} meanwhile; re-run the gate (it compared v{version} against "
            f"{f'v{expected}' if expected else 'no champion'}, {model_name}@{alias} is now v{current})")
    return current


def move_alias(client, model_name: str, alias: str, version: str, current: str | None) -> None:
    """``alias`` -> ``version`` and, when it pointed elsewhere, ``previous`` -> the version it pointed at."""
    client.set_registered_model_alias(model_name, alias, version)
    if current and current != version:
        client.set_registered_model_alias(model_name, PREVIOUS_ALIAS, current)



def current_champion(client, model_name: str, alias: str) -> str | None:
    """Version the registered model's ``alias`` points at; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (rm.aliases or {}).get(alias)
    return str(version) if version is not None else None


def download_version(client, tracking_uri: str, model_name: str, version: str, dst: str | Path) -> Path:
    """Download the artifacts of ``model_name`` version ``version`` (its source folder) into ``dst``."""
    import mlflow

    mv = client.get_model_version(model_name, version)
    # Download the version's source directly: a "models:/" URI would be resolved against the process-global
    # registry URI, not ``tracking_uri``.
    path = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst), tracking_uri=tracking_uri)
    return Path(path)

"""The MLflow toolkit every stage and command shares: tracking URI, client, experiments, params and metrics.

Register writes with it; gate, promote, rollback, resume and the runner read with it. Nothing here imports
mlflow at module level, so importing embedforge stays cheap where MLflow is not used.

A local sqlite store (``sqlite:///<out>/mlflow.db``, what ``embedforge run`` uses) is made safe before MLflow opens
it (:func:`ensure_sqlite_store`, called by :func:`client_for`). MLflow creates a store's tables in place, with a
few dozen schema migrations that each commit: a process interrupted among them (Ctrl-C, SIGKILL) leaves a file
every later open fails on (``table ... already exists``), and two processes opening a new store together both
migrate it and one fails. Here a store is only ever made or migrated

* under an exclusive lock on ``.<name>.lock`` beside it (:func:`embedforge.locks.pid_lock`: one process at a time;
  the others wait, then find it made), and
* in a temporary file beside it (``.<name>.creating-<pid>``), renamed into place once every migration finished:
  the store's path holds either no file or a complete store, whenever the process is stopped.

A store left half made by something else (an older embedforge, MLflow itself) is rebuilt when it holds no runs;
one that holds runs at an older schema is migrated on a copy, the original kept as ``<name>.before-<revision>``.
A file that is not a usable database (damaged, truncated, not sqlite) is one :class:`MlflowStoreError` line that
names it and says what to do, instead of a traceback from deep inside sqlalchemy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.errors import ConfigError, MlflowStoreError
from embedforge.locks import pid_lock
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


def client_for(uri: str, check_integrity: bool = False) -> "MlflowClient":
    """An ``MlflowClient`` for tracking and registry at ``uri`` (never touches the process-global URI); a local
    sqlite store is made complete first (:func:`ensure_sqlite_store`; ``check_integrity``: every page read too).

    Raises:
        MlflowStoreError: ``uri`` names a sqlite file that is not a usable MLflow store.
    """
    from mlflow import MlflowClient

    ensure_sqlite_store(uri, check_integrity)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_error(action: str, uri: str, exc: Exception) -> ConfigError:
    """A one-line ConfigError for an MLflow failure that names the server and what we were doing."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"MLflow at {redact(uri)}: cannot {action}: {redact(msg[:500])}")


# ------------------------------------------------------------------------------------ local sqlite stores
#: How long a process waits while another one makes or migrates the same sqlite store.
STORE_LOCK_TIMEOUT_S = 600.0
#: How long a read of the store waits for another process's write to finish (sqlite's busy timeout).
_BUSY_TIMEOUT_S = 30.0
#: Beside a store ``mlflow.db``: its lock, and the temporary files a store is made in.
_LOCK, _CREATING, _UPGRADING = ".{}.lock", ".{}.creating-", ".{}.upgrading-"
#: Tables every complete store has (the migrations up to the head revision make all of MLflow's).
_CORE_TABLES = frozenset({"experiments", "runs", "registered_models", "model_versions"})


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (absolute); None for other stores and in-memory sqlite."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return Path(db).expanduser().absolute()


@dataclass
class _Store:
    """What a sqlite file holds, as far as making it a complete MLflow store goes."""

    exists: bool
    revision: str | None = None
    tables: set[str] = field(default_factory=set)
    holds_data: bool = False

    @property
    def leftovers(self) -> list[str]:
        """Tables an interrupted schema migration leaves (alembic's batch copies)."""
        return sorted(t for t in self.tables if t.startswith("_alembic_tmp_"))

    @property
    def complete(self) -> bool:
        return (self.exists and self.revision == _head_revision() and not self.leftovers
                and _CORE_TABLES <= self.tables)


def ensure_sqlite_store(uri: str, check_integrity: bool = False) -> None:
    """Make the sqlite store ``uri`` names a complete MLflow store before MLflow opens it (see the module
    docstring); nothing for other stores. Cheap when it is complete already (no lock, one read).

    Args:
        uri: The tracking URI.
        check_integrity: Also read every page of the file (``PRAGMA quick_check``): for a run's preflight, so a
            damaged store fails before the first stage, not at register.

    Raises:
        MlflowStoreError: The file is not a usable database (damaged, truncated, not sqlite, a folder), was made by
            a newer MLflow, holds runs but was left half migrated, or another process holds its lock too long.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if _inspect(path, check_integrity).complete:
        return
    with _store_lock(path):
        found = _inspect(path, check_integrity)  # again: another process may have made it while we waited
        if found.complete:
            return
        _remove_leftovers(path)
        if not found.holds_data:  # missing, or made half by something else and empty: make it anew
            _make(path, _CREATING.format(path.name), source=None)
            return
        if found.leftovers or not _known_revision(found.revision):
            why = (f"left half migrated (tables {', '.join(found.leftovers)})" if found.leftovers else
                   f"made by a newer MLflow (schema {found.revision}, unknown to this MLflow)")
            raise MlflowStoreError(
                f"MLflow store {path} holds runs but was {why}: restore it from a backup, or use the MLflow "
                "version that made it, or move it away (a new, empty store is made in its place)")
        backup = path.with_name(f"{path.name}.before-{found.revision}")
        _make(path, _UPGRADING.format(path.name), source=path, backup=backup)


def _inspect(path: Path, check_integrity: bool) -> _Store:
    """Read what ``path`` holds (read-only; nothing is created).

    Raises:
        MlflowStoreError: It cannot be read as a sqlite database.
    """
    if not path.exists():
        return _Store(exists=False)
    try:
        con = _connect(path)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from None
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if check_integrity:
            problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
        revision = None
        if "alembic_version" in tables:
            revision = next(iter(con.execute("SELECT version_num FROM alembic_version").fetchone() or ()), None)

        def count(sql: str, table: str) -> int:
            return con.execute(sql).fetchone()[0] if table in tables else 0

        holds_data = bool(count("SELECT count(*) FROM runs", "runs")
                          or count("SELECT count(*) FROM registered_models", "registered_models")
                          or count("SELECT count(*) FROM experiments WHERE experiment_id != 0", "experiments"))
        return _Store(exists=True, revision=revision, tables=tables, holds_data=holds_data)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from None
    finally:
        con.close()


def _connect(path: Path) -> sqlite3.Connection:
    """Open an existing sqlite file (never create one). Read-write where allowed: a process killed mid-write
    leaves a hot journal, which sqlite rolls back on the next open — a read-only open cannot, and fails."""
    quoted = urllib.parse.quote(str(path))
    con = None
    try:
        con = sqlite3.connect(f"file:{quoted}?mode=rw", uri=True, timeout=_BUSY_TIMEOUT_S)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError as exc:
        if con is not None:
            con.close()
        if "readonly" not in str(exc) and "unable to open" not in str(exc):
            raise
    except sqlite3.Error:
        if con is not None:
            con.close()
        raise
    return sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)


def _unusable(path: Path, exc: sqlite3.Error) -> MlflowStoreError:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__  # (quick_check reports several lines)
    if "locked" in reason:
        return MlflowStoreError(f"MLflow store {path} is locked by another process for more than "
                                f"{_BUSY_TIMEOUT_S:.0f} s ({reason}): wait for it, or end it")
    if path.is_dir():
        return MlflowStoreError(f"MLflow store {path} is a folder, not a sqlite file: move it away (a new store is "
                                "made in its place) or choose another --out / tracking URI")
    return MlflowStoreError(f"MLflow store {path} is not a usable sqlite database ({reason}): move it away (a new, "
                            "empty store is made in its place) or restore it from a backup")


@functools.cache
def _head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _known_revision(revision: str | None) -> bool:
    """Whether this MLflow's migrations know ``revision`` (a store made by a newer MLflow has one they do not)."""
    if revision is None:
        return True  # tables but no migration yet: MLflow migrates such a store from its first revision
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        return ScriptDirectory.from_config(_get_alembic_config("")).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return False


@contextlib.contextmanager
def _store_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of the store ``path`` while inside (waiting up to ``timeout_s``)."""
    timeout_s = STORE_LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    path.parent.mkdir(parents=True, exist_ok=True)

    def busy(pid: str) -> MlflowStoreError:
        return MlflowStoreError(f"another process (pid {pid}) has been making or migrating the MLflow store {path} "
                                f"for more than {timeout_s:.0f} s: wait for it, or end it")

    with pid_lock(path.with_name(_LOCK.format(path.name)), busy, timeout_s):
        yield


def _remove_leftovers(path: Path) -> None:
    """Delete the temporary stores killed processes left beside ``path`` (only called under its lock, so none of
    them is being made)."""
    for prefix in (_CREATING.format(path.name), _UPGRADING.format(path.name)):
        for f in path.parent.glob(f"{prefix}*"):
            f.unlink(missing_ok=True)


def _make(path: Path, prefix: str, source: Path | None, backup: Path | None = None) -> None:
    """Make a complete store in ``<prefix><pid>`` beside ``path`` — new, or ``source`` copied and migrated — and
    rename it to ``path`` (``backup``: a hard link to the file it replaces is kept there)."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f"{prefix}{os.getpid()}")
    uri = f"sqlite:///{tmp}"
    try:
        if source is not None:  # migrate a copy: the original stays as it is until the copy is complete
            with contextlib.closing(_connect(source)) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
                src.backup(dst)
            engine = create_sqlalchemy_engine(uri)
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
        artifacts = local_artifact_root(f"sqlite:///{path}")
        store = SqlAlchemyStore(uri, artifacts.as_uri() if artifacts else "./mlruns")  # tables, Default experiment
        store.engine.dispose()
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)  # (MLflow caches engines by URI)
        made = _inspect(tmp, check_integrity=True)
        if not made.complete:
            raise MlflowStoreError(f"MLflow could not make a complete store in {tmp} (schema {made.revision})")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if backup is not None:  # the file it replaces stays readable there (a link: no copy where possible)
            backup.unlink(missing_ok=True)
            try:
                os.link(path, backup)
            except OSError:
                shutil.copy2(path, backup)
        os.replace(tmp, path)  # atomic: the path holds the old file or the complete store, never half of one
        _fsync_folder(path.parent)
    except Exception as exc:
        if isinstance(exc, MlflowStoreError):
            raise
        raise MlflowStoreError(f"cannot make the MLflow store {path}: {type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    finally:
        for f in tmp.parent.glob(f"{tmp.name}*"):  # (and its -journal)
            f.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    ``external_delta_<m>``; ``by_dimension.<d>`` (Matryoshka prefixes) -> ``base_<m>_dim_<d>``,
    ``finetuned_<m>_dim_<d>``, ``delta_<m>_dim_<d>``; ``counts.<c>`` -> ``count_<c>``. Non-finite values are
    skipped.

    Args:
        ev: The parsed ``evaluation.json``.
    """
    out: dict[str, float] = {}

    def add_pair(prefix: str, base: Any, fine: Any, suffix: str = "") -> None:
        base = base if isinstance(base, dict) else {}
        fine = fine if isinstance(fine, dict) else {}
        for side, values in (("base", base), ("finetuned", fine)):
            for m, v in values.items():
                if (x := numeric(v)) is not None:
                    out[metric_key(f"{prefix}{side}_{m}{suffix}")] = x
        for m in base.keys() & fine.keys():
            b, f = numeric(base[m]), numeric(fine[m])
            if b is not None and f is not None:
                out[metric_key(f"{prefix}delta_{m}{suffix}")] = f - b

    add_pair("", ev.get("base"), ev.get("finetuned"))
    by_dimension = ev.get("by_dimension")
    for dim, sides in (by_dimension.items() if isinstance(by_dimension, dict) else ()):
        if isinstance(sides, dict):
            add_pair("", sides.get("base"), sides.get("finetuned"), f"_dim_{dim}")
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

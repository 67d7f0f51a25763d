"""How a local sqlite MLflow store is made, migrated, checked and refused (:func:`ensure_sqlite_store`), on real
files: made in a temporary file and renamed into place, never touched when complete, migrated on a copy when it
holds runs, and every file it cannot use is one :class:`MlflowStoreError` line naming it."""

from __future__ import annotations

import fcntl
import os
import sqlite3

import pytest

from embedforge.errors import MlflowStoreError
from embedforge.registry import mlflow as mlflow_store
from embedforge.registry.mlflow import (
    client_for,
    ensure_sqlite_store,
    get_or_create_experiment,
)


def _revision(db) -> str | None:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def test_a_new_store_is_made_beside_and_renamed_into_place(tmp_path):
    db = tmp_path / "out" / "mlflow.db"
    ensure_sqlite_store(f"sqlite:///{db}")
    assert _revision(db) == _head()
    assert sorted(p.name for p in db.parent.iterdir()) == [".mlflow.db.lock", "mlflow.db"]  # no temporary file left
    default = client_for(f"sqlite:///{db}").get_experiment("0")
    assert default.name == "Default" and default.artifact_location == (db.parent / "mlartifacts" / "0").as_uri()


def test_a_complete_store_is_neither_changed_nor_locked(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    run = client.create_run(get_or_create_experiment(client, "kept", uri))
    before = (tmp_path / "mlflow.db").stat()
    with open(tmp_path / ".mlflow.db.lock", "a") as held:  # another process making a store would hold it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        ensure_sqlite_store(uri, check_integrity=True)  # returns at once: a complete store needs no lock
    after = (tmp_path / "mlflow.db").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert client_for(uri).get_run(run.info.run_id).info.run_id == run.info.run_id


def test_waiting_for_a_store_another_process_makes_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_store, "STORE_LOCK_TIMEOUT_S", 0.3)
    with open(tmp_path / ".mlflow.db.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(MlflowStoreError, match=r"another process \(pid 4242\) has been making or migrating the "
                                                   r"MLflow store .*mlflow\.db for more than 0 s: wait for it"):
            ensure_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()


def test_an_empty_file_is_made_a_store(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")  # what a copy that never started, or `touch`, leaves
    ensure_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert _revision(tmp_path / "mlflow.db") == _head()


def _older_store_with_an_experiment(db) -> str:
    """A store as an older MLflow left it: migrated half way to this MLflow's head, holding an experiment."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    uri = f"sqlite:///{db}"
    revisions = [r.revision for r in ScriptDirectory.from_config(_get_alembic_config(uri)).walk_revisions()]
    older = revisions[len(revisions) // 2]
    engine = create_sqlalchemy_engine(uri)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, older)
    engine.dispose()
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage) VALUES ('kept', '/x', 'active')")
    return older


def test_an_older_store_holding_data_is_migrated_on_a_copy(tmp_path):
    db = tmp_path / "mlflow.db"
    older = _older_store_with_an_experiment(db)
    assert _revision(db) == older != _head()
    ensure_sqlite_store(f"sqlite:///{db}")
    assert _revision(db) == _head()
    assert client_for(f"sqlite:///{db}").get_experiment_by_name("kept") is not None  # the data came along
    backup = tmp_path / f"mlflow.db.before-{older}"
    assert _revision(backup) == older  # the file as it was, beside it
    assert not [p for p in tmp_path.iterdir() if "upgrading" in p.name]


def test_a_store_holding_data_left_half_migrated_is_refused_untouched(tmp_path):
    db = tmp_path / "mlflow.db"
    _older_store_with_an_experiment(db)
    with sqlite3.connect(db) as con:  # the copy alembic's batch migration makes, left by a killed migration
        con.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
    before = db.read_bytes()
    with pytest.raises(MlflowStoreError, match=r"holds runs but was left half migrated \(tables "
                                               r"_alembic_tmp_experiments\): restore it from a backup"):
        ensure_sqlite_store(f"sqlite:///{db}")
    assert db.read_bytes() == before


def test_a_store_of_a_newer_mlflow_holding_data_is_refused(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = client_for(uri)
    get_or_create_experiment(client, "kept", uri)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(MlflowStoreError, match="made by a newer MLflow \\(schema ffffffffffff, unknown to this MLflow\\)"):
        ensure_sqlite_store(uri)


@pytest.mark.parametrize("how", ["random bytes", "a folder", "damaged page"])
def test_a_file_that_is_no_usable_database_is_one_line_naming_it(tmp_path, how):
    db = tmp_path / "mlflow.db"
    if how == "random bytes":
        db.write_bytes(os.urandom(8192))
    elif how == "a folder":
        db.mkdir()
    else:  # a store whose header reads but one of its pages does not (only a full check finds it)
        uri = f"sqlite:///{db}"
        client = client_for(uri)
        for i in range(30):
            client.log_param(client.create_run(get_or_create_experiment(client, "e", uri)).info.run_id, "i", "x" * 500)
        with sqlite3.connect(db) as con:
            page = con.execute("PRAGMA page_size").fetchone()[0]
            root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'params'").fetchone()[0]
        with db.open("r+b") as f:
            f.seek((root - 1) * page)
            f.write(os.urandom(page))
    uri = f"sqlite:///{db}"
    with pytest.raises(MlflowStoreError) as err:
        ensure_sqlite_store(uri, check_integrity=True)
    line = str(err.value)
    assert "\n" not in line and str(db) in line, line
    assert ("is a folder, not a sqlite file: move it away" in line if how == "a folder"
            else "is not a usable sqlite database" in line and "move it away" in line and "restore it" in line), line

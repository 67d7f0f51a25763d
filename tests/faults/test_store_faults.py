"""Faults around the local MLflow store and the output folder, with real processes, a real sqlite store and real
signals: what a Ctrl-C, a ``kill -9``, a second run or a damaged file does to ``--out`` and its ``mlflow.db``.

* a process interrupted (SIGINT, SIGKILL) while it makes a new store, at several moments of MLflow's schema
  migrations, leaves a store the next process uses (registers a version in) — and so does a store left half made
  by plain MLflow (an older embedforge);
* two processes making the same new store together both succeed;
* two ``embedforge run`` started together into one new ``--out``: one runs, the other is refused with one line
  naming the first's pid, and makes no attempt;
* a damaged ``mlflow.db`` (random bytes, a truncated file) is one line naming it — from ``embedforge register``,
  and from ``embedforge run`` before its first stage.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import sigkill_when

from embedforge.registry.mlflow import (
    client_for,
    ensure_registered_model,
    get_or_create_experiment,
)

pytest_plugins = ["conftest_mlflow"]

FAST = ["train.epochs=1", "train.batch_size=16", "evaluate.k_values=[1,5,10]", "export.parity_samples=16",
        "validate.min_train_pairs=5", "validate.min_eval_pairs=2"]

#: A new store made through embedforge (every command opens MLflow through client_for).
_OPEN_WITH_EMBEDFORGE = textwrap.dedent("""
    import sys
    from embedforge.registry.mlflow import client_for
    client_for(sys.argv[1]).search_experiments()
""")
#: A new store made by MLflow itself, in place: what an older embedforge, or the mlflow CLI, does.
_OPEN_WITH_MLFLOW = textwrap.dedent("""
    import sys
    from mlflow import MlflowClient
    MlflowClient(sys.argv[1], registry_uri=sys.argv[1]).search_experiments()
""")
#: Imports first, then waits for the go file, so that two of them open the new store at the same moment.
_REGISTER_AT_GO = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from embedforge.registry.mlflow import client_for, ensure_registered_model, get_or_create_experiment
    import mlflow.store.tracking.sqlalchemy_store
    uri, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ready.write_text("ready")
    while not go.exists():
        time.sleep(0.005)
    client = client_for(uri)
    run = client.create_run(get_or_create_experiment(client, f"exp-{os.getpid()}", uri))
    ensure_registered_model(client, "shared")
    client.create_model_version("shared", "file:///nowhere", run_id=run.info.run_id)
    client.set_terminated(run.info.run_id)
    print("registered")
""")


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "300"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("EMBEDFORGE_DEBUG", None)
    return env


def _signal_when(argv: list[str], ready: Callable[[], bool], sig: signal.Signals, timeout_s: float = 300) -> tuple[int, str]:
    """Run ``argv`` in a process group of its own and send ``sig`` to the group as soon as ``ready()`` holds (as a
    terminal's Ctrl-C does with SIGINT); its exit code and stderr."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait()
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace")


def _store_bytes(folder: Path) -> Callable[[], int]:
    """Bytes written so far to the store being made in ``folder`` (``mlflow.db``, or a temporary file beside it)."""
    def written() -> int:
        total = 0
        for f in list(folder.iterdir()) if folder.is_dir() else []:
            if "mlflow.db" in f.name and not f.name.endswith(".lock"):
                try:
                    total += f.stat().st_size
                except FileNotFoundError:  # renamed or removed meanwhile
                    pass
        return total
    return written


def _assert_store_works(uri: str) -> None:
    """What register does with a store: experiment, run, registered model, version — then read them back."""
    client = client_for(uri)
    run = client.create_run(get_or_create_experiment(client, "after-the-fault", uri))
    client.log_param(run.info.run_id, "p", "v")
    ensure_registered_model(client, "after-the-fault")
    mv = client.create_model_version("after-the-fault", "file:///nowhere", run_id=run.info.run_id)
    client.set_terminated(run.info.run_id)
    assert [v.version for v in client.search_model_versions("name='after-the-fault'")] == [mv.version]
    assert client.get_run(run.info.run_id).data.params == {"p": "v"}


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    return errors[0]


# ------------------------------------------------------------------------------- interrupted store creation
@pytest.mark.parametrize("sig, at_bytes", [
    (signal.SIGINT, 1), (signal.SIGINT, 200_000), (signal.SIGINT, 500_000),
    (signal.SIGKILL, 1), (signal.SIGKILL, 200_000), (signal.SIGKILL, 500_000),
])
def test_a_store_creation_interrupted_at_any_moment_leaves_a_usable_store(tmp_path, sig, at_bytes):
    """MLflow makes a store with ~1 MB of tables over dozens of migrations; stopped among them (the first bytes,
    the initial tables, mid-migrations), the next process must still get a working store."""
    out = tmp_path / "out"
    out.mkdir()
    uri = f"sqlite:///{out / 'mlflow.db'}"
    rc, stderr = _signal_when([sys.executable, "-c", _OPEN_WITH_EMBEDFORGE, uri],
                              lambda: _store_bytes(out)() >= at_bytes, sig)
    assert rc != 0, f"the store was made before the {sig.name} came; pick an earlier moment: {stderr[-2000:]}"
    assert not (out / "mlflow.db").exists() or (out / "mlflow.db").stat().st_size > 0
    _assert_store_works(uri)
    assert sorted(p.name for p in out.iterdir() if "creating" in p.name) == []  # the killed one's temp file is gone


@pytest.mark.parametrize("at_bytes", [200_000, 500_000])
def test_a_store_left_half_made_by_plain_mlflow_is_rebuilt(tmp_path, at_bytes):
    """A store MLflow itself was making in place when it was killed (an older embedforge did that) holds no runs:
    it is made anew instead of failing with ``table ... already exists`` forever."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc, stderr = _signal_when([sys.executable, "-c", _OPEN_WITH_MLFLOW, uri],
                              lambda: _store_bytes(tmp_path)() >= at_bytes, signal.SIGKILL)
    assert rc != 0 and (tmp_path / "mlflow.db").is_file(), stderr[-2000:]
    _assert_store_works(uri)


def test_a_run_repairs_a_half_made_store_before_its_first_stage(tmp_path, tiny_corpus):
    """The first register of a new ``--out`` interrupted while MLflow made the store (as before this was safe):
    the next ``embedforge run`` (or ``--resume``) finds a usable store from its preflight on."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    out = tmp_path / "out"
    out.mkdir()
    uri = f"sqlite:///{out / 'mlflow.db'}"
    rc, stderr = _signal_when([sys.executable, "-c", _OPEN_WITH_MLFLOW, uri],
                              lambda: _store_bytes(out)() >= 300_000, signal.SIGKILL)
    assert rc != 0, stderr[-2000:]
    stderr = sigkill_when([sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(tiny_corpus), "--out",
                           str(out), *FAST], lambda: (out / "summary.json").is_file(), _env())  # past its preflight
    assert (out / "summary.json").is_file(), stderr[-3000:]
    with sqlite3.connect(out / "mlflow.db") as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == _get_latest_schema_revision()
        assert not con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp_%'").fetchall()
    _assert_store_works(uri)


def test_two_processes_making_the_same_new_store_both_succeed(tmp_path):
    """Two registers on a new store, released at the same moment: without a lock both run MLflow's migrations
    and one fails (``duplicate column`` / ``table already exists``)."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _REGISTER_AT_GO, uri, str(tmp_path / f"ready-{i}"), str(go)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.write_text("go")
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0 and "registered" in stdout, stderr[-3000:]
    versions = client_for(uri).search_model_versions("name='shared'")
    assert sorted(int(v.version) for v in versions) == [1, 2]


# ------------------------------------------------------------------------------------ two runs, one --out
def test_two_runs_started_together_into_one_out_one_is_refused(tmp_path, tiny_corpus):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(tiny_corpus), "--out", str(out), *FAST]
    procs = [subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while all(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "neither run was refused"
            time.sleep(0.05)
        refused = next(p for p in procs if p.poll() is not None)
        running = next(p for p in procs if p is not refused)
        output, _ = refused.communicate()
        assert refused.returncode == 1, output[-3000:]
        line = _one_error_line(output)
        assert f"another embedforge run holds {out} (pid {running.pid}); wait for it or choose another --out" in line
        while not (out / "summary.json").is_file():  # the run holding --out goes on: it starts its attempt
            assert running.poll() is None, running.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the run holding --out made no attempt"
            time.sleep(0.05)
        assert json.loads((out / "summary.json").read_text())["pid"] == running.pid
        assert len(list((out / "runs").iterdir())) == 1  # the refused run made no attempt of its own
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()


# ---------------------------------------------------------------------------------------- damaged stores
def _damage(db: Path, how: str) -> None:
    if how == "random bytes":
        db.write_bytes(os.urandom(64 * 1024))
        return
    uri = f"sqlite:///{db}"
    client = client_for(uri)  # a store with runs in it, then cut in half (a full disk, a copy that stopped)
    for i in range(20):
        client.log_param(client.create_run(get_or_create_experiment(client, "before", uri)).info.run_id, "i", str(i))
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_register_on_a_damaged_store_is_one_line_naming_it(tmp_path, how, tiny_model, tiny_onnx_dir,
                                                           evaluation_dir_factory, validation_dir):
    db = tmp_path / "mlflow.db"
    _damage(db, how)
    evaluation = evaluation_dir_factory(tmp_path / "evaluation", {"ndcg@10": 0.5}, {"ndcg@10": 0.4})
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "register", "--model", str(tiny_model), "--onnx",
                        str(tiny_onnx_dir), "--evaluation", str(evaluation), "--validation", str(validation_dir),
                        "--out", str(tmp_path / "registry"), "--tracking-uri", f"sqlite:///{db}"],
                       capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    line = _one_error_line(r.stderr)
    assert f"MLflow store {db} is not a usable sqlite database" in line and "move it away" in line, line
    assert "restore it from a backup" in line


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_run_with_a_damaged_store_fails_before_its_first_stage(tmp_path, how, tiny_corpus):
    out = tmp_path / "out"
    out.mkdir()
    _damage(out / "mlflow.db", how)
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(tiny_corpus), "--out",
                        str(out), *FAST], capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    line = _one_error_line(r.stderr)
    assert f"MLflow store {out / 'mlflow.db'} is not a usable sqlite database" in line, line
    assert not (out / "runs").exists() and not (out / "summary.json").exists()  # no stage started, no attempt

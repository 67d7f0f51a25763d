"""Runs never mix and interruptions leave a record: real ``embedforge run`` processes on the tiny corpus.

Each run is an attempt folder ``<out>/runs/<time>-<n>/`` with ``<out>/latest`` pointing at the newest one; the
MLflow store (with its artifacts) stays shared at ``<out>``. A run sent SIGINT or SIGTERM while a stage runs ends
that stage's processes, marks the MLflow run it left RUNNING as KILLED, writes summary.json with status
``interrupted`` and exits 130 / 143; the next run into the same ``--out`` works.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from embedforge.local.attempts import new_attempt, point_latest
from embedforge.registry.mlflow import RUN_ID_FILE, client_for, get_or_create_experiment

FAST = ["train.epochs=1", "train.batch_size=16", "evaluate.k_values=[1,5,10]", "export.parity_samples=16",
        "validate.min_train_pairs=5", "validate.min_eval_pairs=2"]


def _start(out: Path, corpus: Path, tmpdir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(corpus), "--out", str(out),
                             *FAST], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _log_says(out: Path, text: str):
    log = out / "latest" / "logs" / "pipeline.log"
    return lambda: log.is_file() and text in re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))


def _processes_using(out: Path) -> list[str]:
    """Command lines of live processes that mention ``out`` (a stage of the run works on its .kfp folder)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(out) in " ".join(p.info["cmdline"] or []):
                found.append(" ".join(p.info["cmdline"])[:200])
        except psutil.Error:
            pass
    return found


def _interrupt(proc: subprocess.Popen, sig: signal.Signals) -> tuple[int, str]:
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


# ------------------------------------------------------------------------------------------------ layout
def test_attempt_folders_are_new_and_latest_points_at_the_newest(tmp_path):
    first, second = new_attempt(tmp_path), new_attempt(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir())[-1].endswith("-2")
    point_latest(tmp_path, first)
    point_latest(tmp_path, second)
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert os.readlink(tmp_path / "latest") == str(Path("runs") / second.name)  # relative: the folder can move


def test_sqlite_store_keeps_artifacts_beside_the_db_not_in_cwd(tmp_path, monkeypatch):
    out, elsewhere = tmp_path / "out", tmp_path / "cwd"
    out.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = client_for(uri)
    run = client.create_run(get_or_create_experiment(client, "where-artifacts-go", uri))
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert list((out / "mlartifacts").rglob("note.txt")), "artifact not under <out>/mlartifacts"
    assert not (elsewhere / "mlartifacts").exists()


# ------------------------------------------------------------------------------------------ interruptions
@pytest.fixture(scope="module")
def interrupted_out(tmp_path_factory, tiny_corpus):
    """An ``embedforge run`` sent SIGINT while ``mine`` runs: (out, exit code, console output)."""
    out = tmp_path_factory.mktemp("runs") / "out"
    proc = _start(out, tiny_corpus)
    _wait_for(proc, _log_says(out, "Executing task 'mine'"), "mine stage")
    time.sleep(2)  # let the stage's Python get going
    rc, output = _interrupt(proc, signal.SIGINT)
    return out, rc, output


def test_sigint_exits_130_with_an_interrupted_summary(interrupted_out):
    out, rc, output = interrupted_out
    assert rc == 130, output[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["stages"]["mine"]["status"] == "interrupted"
    assert s["stages"]["ingest"]["status"] == "succeeded" and s["stages"]["train"]["status"] == "pending"
    assert s["error"].startswith("interrupted by SIGINT during stage mine")
    assert s == json.loads((out / "latest" / "summary.json").read_text())
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "interrupted by SIGINT during stage mine" in error_lines[0], output[-3000:]
    assert "Traceback" not in output


def test_sigint_leaves_no_stage_process(interrupted_out):
    out, _, _ = interrupted_out
    assert _processes_using(out) == []


def test_sigterm_during_register_marks_the_mlflow_run_killed(interrupted_out, tiny_corpus):
    out, _, _ = interrupted_out
    first = (out / "latest").resolve()
    proc = _start(out, tiny_corpus)
    _wait_for(proc, lambda: any((out / "latest").resolve().glob(f".kfp/*/register/*/{RUN_ID_FILE}")), "register run id")
    rc, output = _interrupt(proc, signal.SIGTERM)
    attempt = (out / "latest").resolve()
    assert attempt != first and json.loads((first / "summary.json").read_text())["status"] == "interrupted"
    s = json.loads((out / "summary.json").read_text())
    if s["stages"]["register"]["status"] == "succeeded":
        pytest.skip("register finished before SIGTERM arrived")  # its window is a few seconds of logging
    assert rc == 143, output[-3000:]
    assert s["status"] == "interrupted" and s["stages"]["register"]["status"] == "interrupted"
    run_id = next(attempt.glob(f".kfp/*/register/*/{RUN_ID_FILE}")).read_text().strip()
    assert f"MLflow run {run_id} marked KILLED" in s["error"]
    assert client_for(f"sqlite:///{out / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"
    assert _processes_using(out) == []


def test_rerun_into_the_same_out_completes_beside_earlier_attempts(interrupted_out, tiny_corpus, tmp_path):
    out, _, _ = interrupted_out
    before = sorted((out / "runs").iterdir())
    proc = _start(out, tiny_corpus, tmpdir=tmp_path)
    output, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, output[-3000:]
    assert list(tmp_path.iterdir()) == []  # no stage left a temp folder outside --out (kfp.local's mktemp -d)
    assert not (out / "latest" / ".kfp" / "tmp").exists()  # and the one inside is gone too
    attempts = sorted((out / "runs").iterdir())
    assert attempts[:-1] == before and (out / "latest").resolve() == attempts[-1].resolve()
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["attempt"] == str(attempts[-1])
    assert (out / "latest" / "onnx" / "model.onnx").is_file() and (out / "latest" / "model" / "config.json").is_file()
    exported = next((out / "latest" / ".kfp").glob("embedforge-*/export/onnx_model/model.onnx"))
    assert (out / "latest" / "onnx" / "model.onnx").samefile(exported)  # a link to the artifact, not a copy
    assert not (before[0] / "model").exists()  # the interrupted attempt stays as it was: no model of another run
    assert json.loads((before[0] / "summary.json").read_text())["status"] == "interrupted"
    run = client_for(f"sqlite:///{out / 'mlflow.db'}").get_run(s["registry"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())
    stored = [p for p in (out / "mlartifacts").rglob("model.onnx") if run.info.run_id in str(p)]
    assert stored and stored[0].samefile(exported)  # MLflow's store shares the bytes with the export output

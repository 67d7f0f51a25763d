"""``embedforge run --resume``: a real run interrupted (SIGINT) after its first stages is finished by a second
process that does not run those stages again; refusals are one line and create no attempt."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedforge.contracts import read_manifest

FAST = ["train.epochs=1", "train.batch_size=16", "evaluate.k_values=[1,5,10]", "export.parity_samples=16",
        "validate.min_train_pairs=5", "validate.min_eval_pairs=2"]
REUSED = ("ingest", "sdg", "validate", "mine")


def _run(out: Path, corpus: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "300"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(corpus), "--out", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _log(attempt: Path) -> str:
    path = attempt / "logs" / "pipeline.log"
    return re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace")) if path.is_file() else ""


def _refused(out: Path, corpus: Path, *extra: str) -> str:
    before = sorted((out / "runs").iterdir()) if (out / "runs").exists() else []
    proc = _run(out, corpus, "--resume", *extra)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output[-3000:]
    after = sorted((out / "runs").iterdir()) if (out / "runs").exists() else []
    assert after == before, "a refused --resume made an attempt folder"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_corpus):
    """An ``embedforge run`` sent SIGINT as soon as ``train`` started (ingest..mine finished): (out, attempt)."""
    out = tmp_path_factory.mktemp("resume") / "out"
    proc = _run(out, tiny_corpus, *FAST)
    deadline = time.time() + 900
    while "Executing task 'train'" not in _log(out / "latest"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "train never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    attempt = (out / "latest").resolve()
    assert json.loads((attempt / "summary.json").read_text())["status"] == "interrupted"
    return out, attempt


def test_nothing_to_resume_in_a_new_out(tmp_path, tiny_corpus):
    assert "nothing to resume" in _refused(tmp_path / "fresh", tiny_corpus, *FAST)


def test_resume_with_other_settings_is_refused(interrupted, tiny_corpus):
    out, _ = interrupted
    assert "differ from those of the interrupted run" in _refused(out, tiny_corpus, *FAST, "train.epochs=2")


def test_resume_finishes_without_rerunning_finished_stages(interrupted, tiny_corpus):
    out, first = interrupted
    proc = _run(out, tiny_corpus, *FAST, "--resume")
    output, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, output[-3000:]
    attempt = (out / "latest").resolve()
    assert attempt != first
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["resumed_from"] == str(first) and s["attempt"] == str(attempt)
    for stage in REUSED:
        assert s["stages"][stage]["status"] == "reused", s["stages"]
    for stage in ("train", "evaluate", "export", "register", "gate"):
        assert s["stages"][stage]["status"] == "succeeded", s["stages"]

    log = _log(attempt)
    assert not any(f"Executing task '{stage}'" in log for stage in REUSED), log[:3000]
    assert "Executing task 'train'" in log and "Task 'mine' reused from" in log
    # the reused artifacts sit inside the new attempt and are the very files the first attempt wrote
    new_run, old_run = next((attempt / ".kfp").glob("embedforge-*")), next((first / ".kfp").glob("embedforge-*"))
    for stage, artifact in (("ingest", "chunks"), ("mine", "mined")):
        new, old = read_manifest(new_run / stage / artifact), read_manifest(old_run / stage / artifact)
        assert new.started_at == old.started_at and new.finished_at == old.finished_at
    train = read_manifest(new_run / "train" / "model")
    assert train.started_at > read_manifest(old_run / "mine" / "mined").finished_at
    assert train.inputs["mined"].startswith(str(attempt))  # later stages read the copies in the new attempt
    assert (attempt / "onnx" / "model.onnx").is_file() and (attempt / "model" / "config.json").is_file()
    assert "(reused)" in output

    assert "nothing to resume" in _refused(out, tiny_corpus, *FAST)  # it succeeded

"""The promotion lock on this machine: a real flock held by real processes; one waits for the other, a bounded
wait ends with one line naming the holder, and the holder's exit releases it however it exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedforge.registry.lock import LockTimeout, lock_folder, lock_name, promotion_lock

HOLD = ("import sys, time; from embedforge.registry.lock import promotion_lock\n"
        "with promotion_lock('my model', sys.argv[1], sys.argv[2]):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[3]))\n")


def _holder(tmp_path: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "repo"),
                          str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_names_are_kubernetes_names_and_distinct_per_model():
    names = {lock_name(m) for m in ("embedforge-embedder", "Embedforge Embedder", "a/b", "x" * 300, "")}
    assert len(names) == 5
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63 for n in names)


def test_the_lock_lives_with_what_promoters_share(tmp_path):
    assert lock_folder("http://mlflow:5000", str(tmp_path / "models")) == tmp_path / "models"
    assert lock_folder(f"sqlite:///{tmp_path}/store/mlflow.db") == (tmp_path / "store").resolve()
    assert lock_folder("http://mlflow:5000").parts[-2:] == ("embedforge", "locks")


def test_a_second_holder_waits_and_a_bounded_wait_names_the_holder(tmp_path):
    holder = _holder(tmp_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"holds .*repo/\.embedforge-promote-my-model-\w+\.lock \(\S+/{holder.pid}\)"):
            with promotion_lock("my model", "sqlite:///x.db", str(tmp_path / "repo"), timeout_s=2):
                pytest.fail("entered a lock another process holds")
        assert time.monotonic() - t0 >= 2
        with promotion_lock("another model", "", str(tmp_path / "repo"), timeout_s=2):  # other models: no wait
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_free_once_its_holder_is_killed(tmp_path):
    holder = _holder(tmp_path, 300)
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up code runs: the kernel drops the flock
    holder.wait()
    t0 = time.monotonic()
    with promotion_lock("my model", "", str(tmp_path / "repo"), timeout_s=10) as where:
        assert where.startswith("file ") and time.monotonic() - t0 < 5


def test_waiting_ends_when_the_holder_finishes(tmp_path):
    holder = _holder(tmp_path, 2)
    t0 = time.monotonic()
    with promotion_lock("my model", "", str(tmp_path / "repo"), timeout_s=60):
        waited = time.monotonic() - t0
    holder.wait()
    assert 0.5 < waited < 30

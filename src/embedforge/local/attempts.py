"""The output folder of ``embedforge run``: one attempt folder per run, ``latest`` and ``summary.json``.

Each run is one *attempt* ``<out>/runs/<UTC time>-<n>/``; ``<out>/latest`` points at the newest and
``<out>/summary.json`` is a copy of its summary. The MLflow store and the LLM work folder stay shared at ``<out>``.

One run at a time writes to an output folder: :func:`holding_out` takes an exclusive ``flock`` on
``<out>/.embedforge-run.lock`` for the whole run (two runs would both make the MLflow store, both point ``latest``,
both resume the same attempt). A second run is refused at once with one line naming the holder's pid; the kernel
releases the lock when the holder exits, however it exits, so a killed run never leaves ``--out`` locked.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from embedforge.contracts import write_json
from embedforge.errors import OutputBusy, refuse_file_in_the_way
from embedforge.locks import pid_lock

#: The advisory lock of an output folder, held by the run writing to it (its content: that run's pid).
RUN_LOCK = ".embedforge-run.lock"


def default_tracking_uri(out: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else the sqlite store ``<out>/mlflow.db`` that persists across attempts."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def check_out(out: Path) -> None:
    """``--out`` must be (or become) a folder: a regular file at it or above it is one line, not a traceback."""
    refuse_file_in_the_way(out, "--out")


@contextmanager
def holding_out(out: Path) -> Iterator[None]:
    """Hold the run lock of ``out`` (created if missing) while inside.

    Raises:
        OutputBusy: Another process holds it (the message names its pid).
    """
    out.mkdir(parents=True, exist_ok=True)

    def busy(pid: str) -> OutputBusy:
        return OutputBusy(f"another embedforge run holds {out} (pid {pid}); wait for it or choose another --out")

    with pid_lock(out / RUN_LOCK, busy):
        yield


def new_attempt(out: Path) -> Path:
    """Create ``<out>/runs/<UTC time>-<n>/`` (n counts the attempts, so names sort and never collide)."""
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    n = len(list(runs.iterdir())) + 1
    while True:
        attempt = runs / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{n}"
        try:
            attempt.mkdir()
            return attempt
        except FileExistsError:
            n += 1


def point_latest(out: Path, attempt: Path) -> None:
    """Make ``<out>/latest`` a relative symlink to ``attempt`` (replaced atomically); ``latest.json`` if no symlinks."""
    link, tmp = out / "latest", out / ".latest.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(attempt.relative_to(out), target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # a filesystem without symlinks
        write_json(out / "latest.json", {"attempt": str(attempt)})


def write_summary(out: Path, attempt: Path, summary: dict[str, Any]) -> None:
    """The attempt's ``summary.json``, copied to ``<out>/summary.json`` (the newest attempt's)."""
    write_json(attempt / "summary.json", summary)
    shutil.copyfile(attempt / "summary.json", out / "summary.json")

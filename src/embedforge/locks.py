"""Advisory file locks between embedforge processes: one holder at a time, and the others learn who holds it.

:func:`pid_lock` takes an exclusive ``flock`` on a lock file and writes the holder's pid into it. The kernel
releases the lock when the holder's descriptor closes — also when the process is killed — so a lock is never left
behind by a crash; the file itself stays (it is only a place to lock). Used for a run's output folder
(:func:`embedforge.local.attempts.holding_out`) and for making a local MLflow store
(:func:`embedforge.registry.mlflow.ensure_sqlite_store`).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_POLL_S = 0.1


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], Exception], timeout_s: float = 0.0) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (created if missing) while inside, waiting up to ``timeout_s`` for it.

    Raises:
        Exception: ``busy(pid)`` — the holder's pid, or ``"unknown"`` — when another process still holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # (not inherited by child processes)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy(_holder(fd)) from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """The pid the holder wrote (it writes it right after taking the lock: wait a moment for it)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode("utf-8", "replace").strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"

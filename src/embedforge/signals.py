"""Turning SIGINT and SIGTERM into ``KeyboardInterrupt`` with child processes ended first, for every long-lived
process embedforge starts: ``embedforge run`` (Ctrl-C, or SIGTERM from whoever runs it) and a training process
(SIGTERM from torchrun ending its workers, or from Kubernetes ending the pod). Unwinding as ``KeyboardInterrupt``
lets ``finally`` blocks and context managers close what the process holds open, e.g. end a live MLflow run as
KILLED, and the recorded signal gives the shell's exit status (128 + signal number: 130, 143).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


def end_child_processes(grace: float = 10.0) -> int:
    """Terminate every descendant of this process (kfp.local's stage ``sh``, its Python, torch workers), killing
    those still alive after ``grace`` seconds; return how many there were. Nothing is left orphaned."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for p in children:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(children)


@contextmanager
def interruptible() -> Iterator[dict[str, int]]:
    """While inside, SIGINT and SIGTERM end the child processes first and then raise ``KeyboardInterrupt`` in the
    main thread (which also stops ``subprocess.Popen.__exit__`` from waiting); the yielded dict gets ``signum``.
    Further signals are ignored until the block is left, so cleanup is not cut short. Main thread only."""
    state: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, _frame: Any) -> None:
        if "signum" in state:
            return
        state["signum"] = signum
        end_child_processes()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)

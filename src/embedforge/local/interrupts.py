"""Ending a local run cleanly on Ctrl-C / SIGTERM: stage processes ended, the MLflow run of an interrupted register
stage marked KILLED and its version (registered without a record) deleted — see :mod:`embedforge.registry.recovery`.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
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


def kill_mlflow_runs(kfp_root: Path, tracking_uri: str) -> list[str]:
    """End the MLflow runs this attempt's register stage left RUNNING; return their ids. A run whose record was
    written is committed; any other is marked KILLED and the version it registered is deleted (it has no record).

    The register stage writes its run id (:data:`embedforge.stages.register.RUN_ID_FILE`) before logging anything."""
    from embedforge.contracts import has_manifest
    from embedforge.registry.mlflow import RUN_ID_FILE, client_for
    from embedforge.registry.recovery import commit, discard

    killed = []
    for f in kfp_root.glob(f"*/register/*/{RUN_ID_FILE}"):
        run_id = f.read_text(encoding="utf-8").strip()
        try:
            client = client_for(tracking_uri)
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            if has_manifest(f.parent):
                commit(client, run_id)
            else:
                discard(client, run_id, status="KILLED")
                killed.append(run_id)
        except Exception as exc:  # an unreachable store must not cost the interrupted summary
            print(f"could not mark MLflow run {run_id} KILLED: {exc}", file=sys.stderr)
    return killed


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

"""A real ``mlflow server`` for tests: sqlite backend + proxied local artifact store in a temporary folder.

Usage::

    with mlflow_server(tmp_path) as uri:   # "http://127.0.0.1:<free port>"
        MlflowClient(uri).search_experiments()

or, to overlap the start-up with other work, ``server = MlflowServer(root).start(); ...; server.wait_ready()``.

The server runs in its own process group and is terminated (then killed, if it lingers) on exit. Its log is
kept in ``<root>/server.log`` and quoted when it fails to start. MLflow's background job runner (a handful of
worker processes, unused by embedforge) is switched off to spare the test machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group we created with start_new_session: server + workers
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


class MlflowServer:
    """``mlflow server`` in a subprocess: :meth:`start` returns at once, :meth:`wait_ready` blocks until healthy.

    Starting early and waiting late lets the server's start-up (tens of seconds: imports and the database
    schema) overlap with other test set-up.

    Args:
        root: Folder for the sqlite database (``mlflow.db``), the artifact store (``artifacts/``) and
            ``server.log``; created if missing.
        startup_timeout_s: How long :meth:`wait_ready` waits for ``GET /health`` to answer 200.
    """

    def __init__(self, root: str | Path, startup_timeout_s: float = 240.0):
        self.root = Path(root)
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self._started_at = 0.0
        self._ready = False

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{(self.root / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((self.root / "artifacts").resolve()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._started_at = time.monotonic()
        return self

    def wait_ready(self) -> str:
        """Block until ``/health`` answers; return the tracking URI.

        Raises:
            RuntimeError: The server exited or did not become healthy in time (log tail in the message).
        """
        if self.proc is None:
            raise RuntimeError("MlflowServer.wait_ready() called before start()")
        deadline = self._started_at + self.startup_timeout_s
        while not self._ready and not _healthy(self.uri):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "did not answer /health"
                raise RuntimeError(f"mlflow server {state} (log {self.log_path}):\n{tail}")
            time.sleep(0.5)
        self._ready = True
        return self.uri

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextlib.contextmanager
def mlflow_server(root: str | Path, startup_timeout_s: float = 240.0) -> Iterator[str]:
    """Start ``mlflow server`` on a free localhost port and yield its tracking URI.

    Args:
        root: Folder for the sqlite database (``mlflow.db``), the artifact store (``artifacts/``) and
            ``server.log``; created if missing.
        startup_timeout_s: How long to wait for ``GET /health`` to answer 200 (the first start creates the
            database schema, which takes tens of seconds on a busy machine).

    Yields:
        The tracking URI, ``http://127.0.0.1:<port>``.

    Raises:
        RuntimeError: The server exited or did not become healthy in time (the log tail is in the message).
    """
    server = MlflowServer(root, startup_timeout_s).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()

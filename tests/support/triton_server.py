"""A real ``tritonserver`` for tests: the binary of PyPI's ``nvidia-pytriton``, in explicit model-control mode.

Usage::

    runtime = ensure_runtime()                       # once per machine, cached (see below)
    with triton_server(repo, runtime) as server:     # server.url == "http://127.0.0.1:<free port>"
        ...

The runtime lives in ``$EMBEDFORGE_TRITON_CACHE`` (default ``~/.cache/embedforge-triton/<key>``) and is built
on first use with pip:

* ``env/``: a venv holding ``nvidia-pytriton`` (installed ``--no-deps``: the package pins ``numpy<2``, which must
  not leak into the project's venv) and what the Python-backend models import: ``numpy<2`` (with numpy 2 the
  backend stub crashes on a BYTES input), ``tokenizers`` (the tokenizer model) and ``onnxruntime`` (the
  embedder run through the Python backend: this Triton build has no ONNX Runtime backend).
* ``server/``: the ``tritonserver`` tree with the Python backend stub for this Python copied next to
  ``libtriton_python.so`` (as pytriton itself prepares it).

The server process gets the venv's ``bin`` first on ``PATH`` (the stub runs the first ``python3`` there) and the
package's bundled libraries (``nvidia_pytriton.libs``) on ``LD_LIBRARY_PATH``; nothing else in the test process
changes. Each server has its own process group and is terminated at exit; its log is ``<log_dir>/triton.log``
and is quoted when it fails to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_server import _stop, answers, free_port

PYTRITON = "nvidia-pytriton==0.7.0"
#: What the Python-backend models (tokenizer, onnxruntime embedder) import inside the server.
STUB_REQUIREMENTS = ("numpy>=1.24,<2", "tokenizers>=0.19", "onnxruntime>=1.18")


@dataclass(frozen=True)
class Runtime:
    """A prepared tritonserver: the binary, its backends/libraries, and the Python env for the stub."""

    root: Path

    @property
    def env_bin(self) -> Path:
        return self.root / "env" / "bin"

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        site = next((self.root / "env" / "lib").glob("python3*/site-packages"))
        return site / "nvidia_pytriton.libs"


def _cache_root() -> Path:
    key = hashlib.sha256("|".join((PYTRITON, *STUB_REQUIREMENTS, sys.version.split()[0])).encode()).hexdigest()[:12]
    base = os.environ.get("EMBEDFORGE_TRITON_CACHE") or Path.home() / ".cache" / "embedforge-triton"
    return Path(base) / key


def ensure_runtime() -> Runtime:
    """Build (once, under a file lock: parallel test processes share it) and return the cached runtime."""
    root = _cache_root()
    rt = Runtime(root)
    if (root / ".ready").is_file():
        return rt
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".ready").is_file():
            return rt
        shutil.rmtree(root / "env", ignore_errors=True)
        shutil.rmtree(root / "server", ignore_errors=True)
        py = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        subprocess.run([shutil.which(py) or sys.executable, "-m", "venv", str(root / "env")], check=True)
        pip = [str(rt.env_bin / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *STUB_REQUIREMENTS], check=True)
        subprocess.run([*pip, "--no-deps", PYTRITON], check=True)
        dist = rt.libs.parent / "pytriton" / "tritonserver"
        shutil.copytree(dist, rt.server_dir, ignore=shutil.ignore_patterns("python_backend_stubs"))
        stub = dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
        shutil.copy2(stub, rt.server_dir / "backends" / "python" / "triton_python_backend_stub")
        (root / ".ready").write_text("ok\n")
    return rt


class TritonServer:
    """``tritonserver --model-control-mode=explicit`` on free localhost ports, serving ``repository``.

    Args:
        repository: The model repository folder (may be empty: models are loaded through the repository API).
        poll_secs: > 0: ``--model-control-mode=poll`` with that scan interval instead (loads what is there).
        runtime: From :func:`ensure_runtime`.
        log_dir: Where ``triton.log`` goes (default: the repository's parent).
        extra_args: More ``tritonserver`` flags.
    """

    def __init__(self, repository: str | Path, runtime: Runtime, log_dir: str | Path | None = None,
                 extra_args: tuple[str, ...] = (), poll_secs: int = 0):
        self.repository = Path(repository)
        self.runtime = runtime
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = Path(log_dir or self.repository.parent) / f"triton-{self.http_port}.log"
        self.extra_args = extra_args
        self.poll_secs = poll_secs
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        self.repository.mkdir(parents=True, exist_ok=True)
        rt = self.runtime
        cmd = [
            str(rt.binary), f"--model-repository={self.repository}",
            *(["--model-control-mode=poll", f"--repository-poll-secs={self.poll_secs}"] if self.poll_secs
              else ["--model-control-mode=explicit"]),
            f"--backend-directory={rt.server_dir / 'backends'}", f"--cache-directory={rt.server_dir / 'caches'}",
            f"--http-port={self.http_port}", "--http-address=127.0.0.1", "--allow-grpc=false",
            "--allow-metrics=false", "--strict-readiness=false", "--exit-timeout-secs=5", *self.extra_args,
        ]
        env = {**os.environ, "PATH": f"{rt.env_bin}:{os.environ.get('PATH', '')}",
               "LD_LIBRARY_PATH": ":".join(p for p in (str(rt.libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
        env.pop("PYTHONPATH", None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not answers(f"{self.url}/v2/health/live"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"tritonserver did not start (log {self.log_path}):\n{tail}")
            time.sleep(0.3)
        return self

    def ready(self, names: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        """Sorted ``(model, version)`` pairs the server reports READY (of ``names``, if given)."""
        import json

        from embedforge.serving.client import admin_headers

        req = urllib.request.Request(f"{self.url}/v2/repository/index", data=b"{}", method="POST",
                                     headers=admin_headers() or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            index = json.loads(resp.read())
        return sorted((m["name"], m["version"]) for m in index
                      if m.get("state") == "READY" and (names is None or m["name"] in names))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server (a crash, as opposed to :meth:`stop`)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, grace_s=20)


def all_on(version: str, model_name: str = "embedder") -> list[tuple[str, str]]:
    """What :meth:`TritonServer.ready` lists when ``model_name``'s three models serve ``version`` only."""
    return sorted((n, str(version)) for n in (model_name, f"{model_name}_onnx", f"{model_name}_tokenizer"))


@contextlib.contextmanager
def triton_server(repository: str | Path, runtime: Runtime, **kwargs) -> Iterator[TritonServer]:
    """Start a :class:`TritonServer` and stop it on exit."""
    server = TritonServer(repository, runtime, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()

"""Fixtures for tests against a real ``tritonserver`` (load with ``pytest_plugins = ["conftest_triton"]``).

* ``triton_runtime``: the cached server + Python-backend environment (tests/support/triton_server.py), built once.
* ``triton``: ``triton(repository, poll_secs=0)`` starts a real server in explicit model-control mode (poll mode
  with ``poll_secs``) on free ports, serving that folder; every server a test started is stopped at its teardown.
* ``triton_cfg``: ``triton_cfg(repo, *servers, **overrides)``: a ``TritonConfig`` for the test servers (the
  embedder through the Python backend: this Triton build has no ONNX Runtime backend).
"""

from __future__ import annotations

import pytest
from triton_server import Runtime, TritonServer, ensure_runtime


@pytest.fixture(scope="session")
def triton_runtime() -> Runtime:
    return ensure_runtime()


@pytest.fixture
def triton(triton_runtime, tmp_path):
    started: list[TritonServer] = []

    def start(repository, poll_secs: int = 0, extra_args: tuple[str, ...] = ()) -> TritonServer:
        server = TritonServer(repository, triton_runtime, log_dir=tmp_path, poll_secs=poll_secs,
                              extra_args=extra_args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def triton_cfg():
    from embedforge.config import TritonConfig

    def make(repo, *servers, **overrides):
        urls = [s.url for s in servers]
        fields = dict(model_name="embedder", instance_kind="KIND_CPU", embedder_backend="python",
                      repository_dir=str(repo), server_url=urls[0] if urls else "",
                      replica_urls=urls if len(urls) > 1 else [], ready_timeout_s=60)
        return TritonConfig(**{**fields, **overrides})

    return make

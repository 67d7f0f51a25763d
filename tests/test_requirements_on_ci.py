"""A test that needs a tool skips on a developer's machine without it, and fails under CI: a green CI run means
the kubectl, PostgreSQL, Chromium and llama.cpp tests ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest_without_kubectl(ci: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": "/nonexistent", "CI": ci}  # shutil.which("kubectl") finds nothing
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "tests/kfp/test_manifests.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_missing_tool_fails_under_ci():
    r = _pytest_without_kubectl("true")
    assert r.returncode != 0
    assert "kubectl (with kustomize) is missing on CI: install kubectl" in r.stdout


def test_a_missing_tool_skips_elsewhere():
    r = _pytest_without_kubectl("")
    assert r.returncode in (0, 5) and "1 skipped" in r.stdout and "passed" not in r.stdout, r.stdout[-2000:]  # 5: none ran

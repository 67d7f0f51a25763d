"""`embedforge submit`: the real CLI and the real kfp.Client against a KFP API server on localhost.

The server is the external system (the KFP v2beta1 REST API, as much of it as ``kfp.Client`` calls for
``create_run_from_pipeline_package`` + following the run: ``GET /healthz``, ``GET``/``POST /experiments``,
``POST /runs`` with the pipeline spec inline, ``GET /runs/{id}``). It records every request, so the tests check
what actually went over the wire: the compiled pipeline and our parameters in the run, the token in the
Authorization header and nowhere else, and the exit code and one-line errors of the command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from json_http import JsonHandler

TOKEN = "kfp-TOKEN-8c1f0e9a"
API = "/apis/v2beta1"


class KfpApi(ThreadingHTTPServer):
    """A KFP v2beta1 API server: experiments and runs in memory, every request recorded."""

    daemon_threads = True

    def __init__(self, token: str | None, final_state: str = "SUCCEEDED"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token, self.final_state = token, final_state
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.reads: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(JsonHandler):
    server: KfpApi

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        srv = self.server
        srv.requests.append({"method": method, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": raw})
        if srv.token is not None and self.headers.get("Authorization") != f"Bearer {srv.token}":
            return self._reply(401, {"error_message": "Unauthorized", "code": 16})
        url = urlparse(self.path)
        if method == "GET" and url.path == f"{API}/healthz":
            return self._reply(200, {"multi_user": False})
        if method == "GET" and url.path == f"{API}/experiments":
            wanted = json.loads(parse_qs(url.query)["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in srv.experiments.values() if e["display_name"] == wanted]
            return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
        if method == "POST" and url.path == f"{API}/experiments":
            exp = {**json.loads(raw), "experiment_id": f"exp-{len(srv.experiments) + 1}"}
            srv.experiments[exp["experiment_id"]] = exp
            return self._reply(200, exp)
        if method == "POST" and url.path == f"{API}/runs":
            run = {**json.loads(raw), "run_id": f"run-{len(srv.runs) + 1}", "state": "PENDING"}
            srv.runs[run["run_id"]] = run
            return self._reply(200, {k: v for k, v in run.items() if k != "pipeline_spec"})
        if method == "GET" and url.path.startswith(f"{API}/runs/"):
            run_id = url.path.rsplit("/", 1)[1]
            srv.reads[run_id] = srv.reads.get(run_id, 0) + 1  # RUNNING on the first read, then the end state
            state = "RUNNING" if srv.reads[run_id] == 1 else srv.final_state
            return self._reply(200, {"run_id": run_id, "state": state})
        return self._reply(404, {"error_message": f"no route {method} {url.path}"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@pytest.fixture
def kfp_api(request):
    opts = getattr(request, "param", {})
    server = KfpApi(token=opts.get("token", TOKEN), final_state=opts.get("final_state", "SUCCEEDED"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


#: An image as `make images PUSH=1` prints it (submit refuses the unpublished default).
PUBLISHED = "registry.example/team/embedforge@sha256:" + "0f" * 32


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    from embedforge.pipelines.pipeline import KubernetesSettings, compile_pipeline

    return Path(compile_pipeline(str(tmp_path_factory.mktemp("pkg") / "embedforge.yaml"),
                                 k8s=KubernetesSettings(image=PUBLISHED)))


def _submit(*args: str, token: str | None = TOKEN, home: Path | None = None, endpoint: str | None = None
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("KF_PIPELINES_TOKEN", None)
    env.pop("KF_PIPELINES_ENDPOINT", None)
    if endpoint is not None:
        env["KF_PIPELINES_ENDPOINT"] = endpoint
    if token is not None:
        env["KF_PIPELINES_TOKEN"] = token
    if home is not None:
        env["HOME"] = str(home)  # kfp.Client reads/writes ~/.config/kfp
    return subprocess.run([sys.executable, "-m", "embedforge.cli", "submit", *args], capture_output=True,
                          text=True, env=env, timeout=300)


# ------------------------------------------------------------------------------------------------ the tests
def test_submit_sends_the_compiled_pipeline_with_the_params_and_prints_the_run_url(kfp_api, package, tmp_path):
    r = _submit("--host", kfp_api.url, "--package", str(package), "--experiment", "nightly", "--namespace", "team-a",
                "--param", "corpus_uri=s3://docs-bucket/corpus/2026-12-01/",
                "--param", 'train_config={"epochs": 1, "batch_size": 16}', home=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{kfp_api.url}/#/runs/details/run-1"

    (run,) = kfp_api.runs.values()
    (exp,) = kfp_api.experiments.values()
    assert exp["display_name"] == "nightly" and run["experiment_id"] == exp["experiment_id"]
    assert exp["namespace"] == "team-a" and run["service_account"] == "embedforge-pipeline"
    assert run["runtime_config"]["parameters"] == {
        "corpus_uri": "s3://docs-bucket/corpus/2026-12-01/", "train_config": {"epochs": 1, "batch_size": 16}}
    # the pipeline spec in the run is our compiled package: same pipeline, same components, same images, and the
    # Kubernetes platform spec travels with it
    ours = list(yaml.safe_load_all(package.read_text()))
    sent = run["pipeline_spec"]
    assert sent["pipeline_spec"]["pipelineInfo"]["name"] == ours[0]["pipelineInfo"]["name"] == "embedforge"
    assert set(sent["pipeline_spec"]["components"]) == set(ours[0]["components"])
    assert set(sent["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]) == set(
        ours[0]["root"]["inputDefinitions"]["parameters"])
    images = {e["container"]["image"] for e in sent["pipeline_spec"]["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {e["container"]["image"] for e in ours[0]["deploymentSpec"]["executors"].values()
                      if "container" in e}
    assert sent["platform_spec"] == ours[1]

    # the token went in the Authorization header of every request, and nowhere else
    assert kfp_api.requests and all(q["headers"].get("authorization") == f"Bearer {TOKEN}" for q in kfp_api.requests)
    for q in kfp_api.requests:
        other = {k: v for k, v in q["headers"].items() if k != "authorization"}
        assert TOKEN not in q["path"] + q["body"] + json.dumps(other)
    assert TOKEN not in r.stdout + r.stderr


def test_the_endpoint_is_given_as_the_kfp_cli_takes_it(kfp_api, package, tmp_path):
    """kfp's own conventions name the API: ``--endpoint`` (as the kfp CLI) or ``$KF_PIPELINES_ENDPOINT`` (as
    ``kfp.Client()``); the run reaches that server, and an explicit option beats the variable."""
    r = _submit("--endpoint", kfp_api.url, "--package", str(package), "--param", "corpus_uri=s3://b/c", home=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{kfp_api.url}/#/runs/details/run-1"
    r = _submit("--package", str(package), "--param", "corpus_uri=s3://b/c", home=tmp_path, endpoint=kfp_api.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{kfp_api.url}/#/runs/details/run-2" and len(kfp_api.runs) == 2
    r = _submit("--host", kfp_api.url, "--package", str(package), "--param", "corpus_uri=s3://b/c", home=tmp_path,
                endpoint="http://127.0.0.1:9")  # (nothing listens there)
    assert r.returncode == 0 and len(kfp_api.runs) == 3, r.stdout + r.stderr
    r = _submit("--package", str(package), "--param", "corpus_uri=s3://b/c", home=tmp_path)
    assert r.returncode == 2 and "--host" in r.stderr and "KF_PIPELINES_ENDPOINT" in r.stderr, r.stderr


@pytest.mark.parametrize("kfp_api, expect_rc", [({"final_state": "SUCCEEDED"}, 0), ({"final_state": "FAILED"}, 1)],
                         indirect=["kfp_api"])
def test_wait_follows_the_run_and_exits_with_its_state(kfp_api, expect_rc, package, tmp_path):
    r = _submit("--host", kfp_api.url, "--package", str(package), "--param", "corpus_uri=s3://b/c",
                "--wait", "--poll", "0.1", home=tmp_path)
    assert r.returncode == expect_rc, r.stdout + r.stderr
    assert kfp_api.reads["run-1"] == 2  # RUNNING, then the end state
    assert f"run-1: {kfp_api.final_state}" in r.stderr
    assert TOKEN not in r.stdout + r.stderr


@pytest.mark.parametrize("kfp_api", [{"token": "the-right-one"}], indirect=True)
def test_a_refused_token_is_one_clear_line(kfp_api, package, tmp_path):
    r = _submit("--host", kfp_api.url, "--package", str(package), "--param", "corpus_uri=s3://b/c", home=tmp_path)
    assert r.returncode == 1
    assert "401 Unauthorized" in r.stderr and "KF_PIPELINES_TOKEN" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert TOKEN not in r.stdout + r.stderr and not kfp_api.runs


def test_an_unreachable_host_is_one_clear_line(package, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _submit("--host", f"http://127.0.0.1:{port}", "--package", str(package), "--param", "corpus_uri=s3://b/c",
                home=tmp_path)
    assert r.returncode == 1
    assert f"cannot connect to the KFP API at http://127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr and TOKEN not in r.stdout + r.stderr


def test_params_are_checked_against_the_package_before_anything_is_sent(kfp_api, package, tmp_path):
    r = _submit("--host", kfp_api.url, "--package", str(package), "--param", "corpus_path=/data/docs", home=tmp_path)
    assert r.returncode == 1 and "corpus_path: not a parameter of embedforge.yaml" in r.stderr
    r = _submit("--host", kfp_api.url, "--package", str(package), home=tmp_path)
    assert r.returncode == 1 and "needs --param corpus_uri=..." in r.stderr
    assert not kfp_api.requests


def test_without_a_package_it_compiles_the_requested_variant(kfp_api, tmp_path):
    r = _submit("--host", kfp_api.url, "--inputs", "pvc", "--image", PUBLISHED, "--param", "corpus_path=/data/docs",
                home=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = kfp_api.runs.values()
    assert "corpus_path" in run["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]

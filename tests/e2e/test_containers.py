"""The production path, run: the compiled pipeline executed container by container, to a served champion and back.

Images (built by ``make e2e`` from the project's Dockerfiles on a local Debian base, images/base.sh + build.sh):
the component image (CPU variant), the MLflow server image and the local Triton image. Services, on this
machine's loopback: PostgreSQL (Debian's binaries) and an S3 server (moto) as the MLflow stores — the prod overlay's
setup —, MLflow in its container with basic auth, Triton in its container serving a model-repository folder.

The pipeline is ``embedforge compile --inputs pvc --image <the component image>``; every step runs in that image
as KFP would run its pod (tests/support/kfp_containers.py): uid 1000, read-only root filesystem, the declared
volumes, Secrets and ConfigMap only, no network for steps that need none. Then, as a platform engineer would:

1. run A trains on a small corpus: the gate promotes v1; Triton serves it and ``embedforge embed`` gets vectors;
2. run B trains a damaged model (a learning rate that wrecks it): registered as v2, not promoted;
3. run C promotes a damaged model by an operator's mistake (the gate told that lower is better);
4. the rollback pod of docs/kubernetes.md (its command, env and mounts, taken from that page) puts v1 back.

The shared volumes start as many storage classes make them, ``root:0755``, and the manifests' volume-init Job
(its container, capabilities and command as rendered) gives them to uid 1000; Triton runs with the manifests'
restriction of its repository API to the admin key, which promote and the rollback pod get from the Secret.

Marked ``e2e``: ``make e2e`` runs it (CI too); it needs docker and the images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require
from kfp_containers import CompiledPipeline
from mlflow_server import answers, free_port, postgres_bin_dir, production_mlflow

from embedforge.sample_corpus import SAMPLE_CORPUS

# two whole pipeline runs, container by container, on a 2-core machine: more than the suite's 1200 s per test
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

REPO = Path(__file__).resolve().parents[2]
TAG = os.environ.get("E2E_TAG", "dev")
REGISTRY = os.environ.get("E2E_REGISTRY", "embedforge.local")
IMAGE = f"{REGISTRY}/embedforge:{TAG}-cpu"
MLFLOW_IMAGE = f"{REGISTRY}/embedforge-mlflow:{TAG}"
TRITON_IMAGE = f"{REGISTRY}/embedforge-triton-local:{TAG}"
MODEL = "embedforge-embedder"
SERVED = "embedder"
NETWORKED = ("train", "register", "gate", "promote", "report")  # they talk to MLflow / Triton (train: its live run); the rest get no network
ADMIN_KEY = "e2e-admin-" + "5f" * 12  # the Secret embedforge-triton-admin's admin-key


def _docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)


def _chown(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.rglob("*")]:
        os.chown(p, 1000, 1000)
    return path


@pytest.fixture(scope="module")
def images():
    require(shutil.which("docker") is not None and _docker("info").returncode == 0, "a running docker",
            "apt-get install -y docker.io && dockerd &")
    missing = [i for i in (IMAGE, MLFLOW_IMAGE, TRITON_IMAGE) if _docker("image", "inspect", i).returncode != 0]
    require(not missing, f"the images {missing}", "make e2e builds them (images/base.sh, images/build.sh)")
    # each image records the base it was built FROM (images/build.sh), and that base exists as recorded
    for image in (IMAGE, MLFLOW_IMAGE, TRITON_IMAGE):
        labels = json.loads(_docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout) or {}
        base, base_id = labels.get("org.opencontainers.image.base.name"), labels.get("org.opencontainers.image.base.digest")
        assert base and base_id and base_id.startswith("sha256:"), (image, labels)
        assert _docker("image", "inspect", "--format", "{{.Id}}", base).stdout.strip() == base_id, image


@pytest.fixture(scope="module")
def prod_mlflow(images, tmp_path_factory):
    """MLflow in its image on PostgreSQL + S3 with basic auth; yields (uri, pipeline user, password, admin pw)."""
    bin_dir = postgres_bin_dir()
    require(bin_dir is not None, "PostgreSQL binaries", "apt-get install -y postgresql")
    with production_mlflow(tmp_path_factory.mktemp("mlflow"), bin_dir, image=MLFLOW_IMAGE) as prod:
        yield prod.uri, prod.username, prod.password, prod.admin_password


@pytest.fixture(scope="module")
def volumes(images, tmp_path_factory) -> dict[str, Path]:
    """The two shared volumes, made ``root:0755`` as a storage class may make them, then handed to uid 1000 by
    the volume-init Job's container exactly as the manifests render it (root, only CHOWN/FOWNER/FSETID, read-only root)."""
    import yaml

    root = tmp_path_factory.mktemp("volumes")
    vols = {"embedforge-data": root / "data", "embedforge-model-repository": root / "models"}
    for path in vols.values():
        path.mkdir(mode=0o755)
        assert path.stat().st_uid == 0 and oct(path.stat().st_mode & 0o7777) == "0o755"
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests" / "overlays" / "prod")],
                              capture_output=True, text=True, check=True).stdout
    job = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    mounts = [a for m in c["volumeMounts"] for a in ("-v", f"{vols[claims[m['name']]]}:{m['mountPath']}")]
    caps = [a for cap in sc["capabilities"]["add"] for a in ("--cap-add", cap)]
    r = _docker("run", "--rm", "--network", "none", "--user", str(sc["runAsUser"]), "--read-only",
                "--cap-drop", "ALL", *caps, "--security-opt", "no-new-privileges", *mounts,
                "--entrypoint", c["command"][0], MLFLOW_IMAGE, *c["command"][1:], *c["args"])
    assert r.returncode == 0, r.stdout + r.stderr
    for path in vols.values():
        assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000) and path.stat().st_mode & 0o2775 == 0o2775
    return vols


@pytest.fixture(scope="module")
def triton(images, volumes):
    """tritonserver in its image, explicit model control, its repository API restricted to the admin key as
    manifests/base/triton.yaml starts it, serving the model-repository volume; yields (url, folder)."""
    from embedforge.serving.client import ADMIN_HEADER

    repo = volumes["embedforge-model-repository"]
    port, grpc = free_port(), free_port()
    name = f"embedforge-triton-{port}"
    r = _docker("run", "-d", "--rm", "--name", name, "--network", "host", "--user", "1000:1000", "--read-only",
                "--tmpfs", "/tmp:rw,mode=1777", "--tmpfs", "/home/triton:rw,uid=1000,gid=1000",
                "-v", f"{repo}:/models", TRITON_IMAGE, "--model-repository=/models", "--model-control-mode=explicit",
                f"--http-port={port}", f"--grpc-port={grpc}", "--http-address=127.0.0.1", "--allow-metrics=false",
                "--strict-readiness=false", "--exit-timeout-secs=5",
                f"--http-restricted-api=model-repository,model-config,shared-memory:{ADMIN_HEADER}={ADMIN_KEY}")
    assert r.returncode == 0, r.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not answers(f"{url}/v2/health/live"):
            assert time.monotonic() < deadline, _docker("logs", name).stdout[-3000:]
            time.sleep(0.5)
        yield url, repo
    finally:
        _docker("rm", "-f", name)


def _served(url: str) -> set[tuple[str, str]]:
    import urllib.request

    from embedforge.serving.client import ADMIN_HEADER

    req = urllib.request.Request(f"{url}/v2/repository/index", data=b"{}", method="POST",
                                 headers={ADMIN_HEADER: ADMIN_KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {(m["name"], m["version"]) for m in json.loads(resp.read()) if m.get("state") == "READY"}


def _alias(uri: str, user: str, password: str, alias: str) -> str | None:
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    code = ("import sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1], registry_uri=sys.argv[1]);"
            "a = c.get_registered_model(sys.argv[2]).aliases; print(a.get(sys.argv[3], ''))")
    r = subprocess.run([sys.executable, "-c", code, uri, MODEL, alias], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip() or None


def _train_runs(uri: str, user: str, password: str) -> list[dict]:
    """The train steps' live MLflow runs: their parent run and how many steps of ``train/loss`` they logged."""
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    code = ("import json, sys; from mlflow import MlflowClient; c = MlflowClient(sys.argv[1]);"
            "e = c.get_experiment_by_name('embedforge');"
            "rs = c.search_runs([e.experiment_id], \"tags.`embedforge.stage` = 'train'\") if e else [];"
            "print(json.dumps([{'parent': r.data.tags.get('mlflow.parentRunId', ''),"
            " 'loss_steps': len(c.get_metric_history(r.info.run_id, 'train/loss'))} for r in rs]))")
    r = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def pipeline(images, tmp_path_factory, tiny_corpus, prod_mlflow, triton, volumes):
    """Compile the Kubernetes variant for the component image and return ``run(tag, **overrides)``."""
    from embedforge.config import PipelineConfig

    uri, user, password, _ = prod_mlflow
    url, models = triton
    work = tmp_path_factory.mktemp("e2e")
    package = work / "embedforge.yaml"
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "compile", "--inputs", "pvc", "--image", IMAGE,
                        "--output", str(package)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = volumes["embedforge-data"]
    # the inputs, put on the volume by their owner (uid 1000), as a data team would
    shutil.copytree(SAMPLE_CORPUS, data / "sample")  # what `make demo` trains on: enough eval queries to gain
    shutil.copytree(tiny_corpus, data / "tiny")      # 16 documents: quick runs for the damaged models
    for sub in ("sample", "tiny"):
        _chown(data / sub)
    base = PipelineConfig().resolved(cuda_available=False)[0].to_dict()  # the CPU profile, as `make demo` runs
    small = {
        "train_config": {**base["train"], "device": "cpu", "work_dir": "/data/train_work"},
        "mine_config": {**base["mine"], "use_gpu": False},
        "register_config": {**base["register"], "model_name": MODEL},
        # these runs test promotion mechanics (promote, refuse, operator's mistake, roll back), not statistics:
        # the means decide, not the paired intervals a small corpus's few eval queries cannot narrow
        "gate_config": {**base["gate"], "rule": "point"},
        "triton_config": {**base["triton"], "model_name": SERVED, "repository_dir": "/models", "server_url": url,
                          "discover_replicas": False, "instance_kind": "KIND_CPU", "embedder_backend": "python",
                          "max_batch_size": 8},
    }
    tiny = {"validate_config": {**base["validate"], "min_train_pairs": 5, "min_eval_pairs": 2},
            "evaluate_config": {**base["evaluate"], "k_values": [1, 5, 10]}}

    def run(tag: str, corpus: str = "sample", **overrides) -> dict:
        runner = CompiledPipeline(
            package, work / tag, pvcs={"embedforge-data": data, "embedforge-model-repository": models},
            secrets={"embedforge-mlflow": {"username": user, "password": password},
                     "embedforge-triton-admin": {"admin-key": ADMIN_KEY}},
            config_maps={"embedforge-config": {"MLFLOW_TRACKING_URI": uri}}, networked=NETWORKED)
        args = {**small, **(tiny if corpus == "tiny" else {}),
                "corpus_path": f"/data/{corpus}", "tracking_uri": ""}  # tracking URI: from the ConfigMap
        for key, value in overrides.items():
            args[key] = {**args.get(key, base.get(key.removesuffix("_config"), {})), **value}
        for section in ("ingest", "sdg", "validate", "evaluate", "export", "gate", "prompts", "model"):
            key = "prompts" if section == "prompts" else f"{section}_config"
            args.setdefault(key, base[section])  # every section as the CPU profile has it
        return runner.run(args)

    return run


def test_compiled_pipeline_in_containers_promotes_serves_refuses_a_worse_model_and_rolls_back(
        pipeline, prod_mlflow, triton, tmp_path):
    uri, user, password, admin_password = prod_mlflow
    url, models = triton

    # 1. a good run: every step ran in its container; v1 is the champion and every model of it is served
    runs = pipeline("a")
    assert set(runs) == {"ingest", "sdg", "validate", "mine", "train", "evaluate", "export", "register", "gate",
                         "promote", "report"}
    assert runs["gate"].parameters["Output"] is True
    assert _alias(uri, user, password, "champion") == "1"
    live = _train_runs(uri, user, password)  # the train pod's live run, made a child of register's run
    assert len(live) == 1 and live[0]["parent"] and live[0]["loss_steps"] > 0, live
    assert {(SERVED, "1"), (f"{SERVED}_onnx", "1"), (f"{SERVED}_tokenizer", "1")} <= _served(url)
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "embed", "--url", url, "--model", SERVED,
                        "--input-type", "query", "how do I leave a loop early"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    vectors = json.loads(r.stdout)["embeddings"]
    assert len(vectors) == 1 and len(vectors[0]) == 384
    logs = "".join(run.log for run in runs.values())
    assert password not in logs and ADMIN_KEY not in logs  # the Secrets' values are never printed

    # 2. a damaged model (learning rate 0.05): registered, not promoted; serving and alias stay on v1
    runs = pipeline("b", "tiny", train_config={"learning_rate": 0.05, "warmup_ratio": 0.0})
    assert runs["gate"].parameters["Output"] is False and "promote" not in runs
    assert _alias(uri, user, password, "champion") == "1"
    assert (SERVED, "2") not in _served(url)

    # 3. an operator's mistake (the gate told lower is better) promotes a damaged model: v3 is served
    runs = pipeline("c", "tiny", train_config={"learning_rate": 0.05, "warmup_ratio": 0.0},
                    gate_config={"greater_is_better": False})
    assert runs["gate"].parameters["Output"] is True and runs["promote"].returncode == 0
    assert _alias(uri, user, password, "champion") == "3" and (SERVED, "3") in _served(url)

    # 4. the rollback pod of docs/kubernetes.md, run as that page runs it: v1 served again, then champion -> v1
    pod = _rollback_pod()
    command = [_local(a, uri, url) for a in pod["command"]] + ["--set", f"triton.model_name={SERVED}",
                                                               "--set", "triton.discover_replicas=false"]
    secrets = {"embedforge-mlflow": {"username": user, "password": password},
               "embedforge-triton-admin": {"admin-key": ADMIN_KEY}}
    env = {e["name"]: secrets[e["valueFrom"]["secretKeyRef"]["name"]][e["valueFrom"]["secretKeyRef"]["key"]]
           for e in pod["env"]}
    mounts = {m["mountPath"] for m in pod["volumeMounts"]}
    assert mounts == {"/models", "/tmp"} and pod["securityContext"]["readOnlyRootFilesystem"] is True
    r = subprocess.run(["docker", "run", "--rm", "--network", "host", "--user", "1000:1000", "--read-only",
                        "--cap-drop", "ALL", "--tmpfs", "/tmp:rw,mode=1777", "-v", f"{models}:/models",
                        *[a for k in env for a in ("-e", k)], IMAGE, *command],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _alias(uri, user, password, "champion") == "1" and _alias(uri, user, password, "previous") == "3"
    assert (SERVED, "1") in _served(url) and (SERVED, "3") not in _served(url)


def _rollback_pod() -> dict:
    """The container of the rollback pod in docs/kubernetes.md (its --overrides JSON)."""
    text = (REPO / "docs" / "kubernetes.md").read_text()
    block = text[text.index("kubectl -n $NS run rollback"):]
    overrides = re.search(r"--overrides='(.*?)'\n", block, re.S).group(1).replace("'$IMG'", "IMG")
    return json.loads(overrides)["spec"]["containers"][0]


def _local(arg: str, mlflow_uri: str, triton_url: str) -> str:
    """The page's in-cluster Service URLs -> this machine's servers."""
    return arg.replace("http://mlflow:5000", mlflow_uri).replace("http://triton-replicas:8000", triton_url)

"""TrainJob (train.nodes > 1): the generated object checked against the Kubeflow Trainer TrainJob model, and the
train step's submit / wait / clean-up driven through the real ``kubernetes`` client against a local HTTP server
that speaks the Kubernetes REST paths ``CustomObjectsApi`` calls (POST/GET/DELETE
``/apis/trainer.kubeflow.org/v1alpha1/namespaces/<ns>/trainjobs[/<name>]``), playing a Trainer controller whose
job succeeds, fails or stays stuck. The Role in manifests/base/trainjob-rbac.yaml must grant exactly the verbs the
client was seen to use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from json_http import JsonHandler

NS = "ml-team"
PATH = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
VERB = {"POST": "create", "GET": "get", "DELETE": "delete"}
ROOT = Path(__file__).resolve().parents[2]


def _condition(type_: str, status: str, reason: str, message: str) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-01T10:00:00Z"}


PENDING = {"jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]}
RUNNING = {"jobsStatus": [{"name": "node", "active": 1, "ready": 1, "succeeded": 0, "failed": 0, "suspended": 0}]}
COMPLETE = {"conditions": [_condition("Complete", "True", "JobsCompleted", "TrainJob is completed")],
            "jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 1, "failed": 0, "suspended": 0}]}
FAILED = {"conditions": [_condition("Failed", "True", "FailedJobs",
                                    "jobset failed: node-0 exited with code 1 (CUDA out of memory)")],
          "jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 1, "suspended": 0}]}


class FakeKubeApi:
    """A Kubernetes API server for TrainJobs only: stores what is POSTed (rejecting bodies that are not a valid
    TrainJob), answers GETs with the next status of ``statuses`` (the last one repeats), DELETEs, and records every
    request as ``(verb, resource)``. ``on_create(body)`` plays the nodes (e.g. writes the model)."""

    def __init__(self, statuses: list[dict], on_create: Callable[[dict], None] | None = None,
                 create_status: int = 201):
        self.statuses, self.on_create, self.create_status = statuses, on_create, create_status
        self.jobs: dict[str, dict] = {}
        self.created: list[dict] = []
        self.gets = 0
        self.calls: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, dict]] = []
        fake = self

        class Handler(JsonHandler):
            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def _handle(self) -> None:
                path = self.path.split("?", 1)[0]
                name = path[len(PATH) + 1:] if path.startswith(PATH + "/") else ""
                if not path.startswith(PATH):
                    return self._reply(404, _status(404, "NotFound", f"no route {path}"))
                fake.calls.append((VERB[self.command], "trainjobs"))
                try:
                    return getattr(fake, f"do_{self.command.lower()}")(self, name)
                except Exception as exc:  # an invalid body or a broken test hook: an API error, not a hang-up
                    return self._reply(500, _status(500, "InternalError", repr(exc)[:300]))

            do_POST = do_GET = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # the three verbs, as a Trainer-enabled API server answers them
    def do_post(self, h, name: str) -> None:
        from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

        body = h._body()
        if self.create_status != 201:
            return h._reply(self.create_status, _status(self.create_status, "Forbidden",
                                                         'trainjobs.trainer.kubeflow.org is forbidden: User '
                                                         '"system:serviceaccount:ml-team:default" cannot create'))
        parsed = TrainerV1alpha1TrainJob.from_dict(body)  # raises on an invalid body -> the client sees a 500
        if parsed.to_dict() != body or body.get("kind") != "TrainJob":
            return h._reply(422, _status(422, "Invalid", "unknown or malformed fields"))
        body.setdefault("metadata", {})["uid"] = "1b2c"
        self.jobs[body["metadata"]["name"]] = body
        self.created.append(body)
        if self.on_create:
            self.on_create(body)
        h._reply(201, body)

    def do_get(self, h, name: str) -> None:
        if name not in self.jobs:
            return h._reply(404, _status(404, "NotFound", f'trainjobs "{name}" not found'))
        status = self.statuses[min(self.gets, len(self.statuses) - 1)]
        self.gets += 1
        h._reply(200, {**self.jobs[name], "status": status})

    def do_delete(self, h, name: str) -> None:
        body = h._body()
        if self.jobs.pop(name, None) is None:
            return h._reply(404, _status(404, "NotFound", f'trainjobs "{name}" not found'))
        self.deleted.append((name, body))
        h._reply(200, _status(200, "", "", "Success"))

    def api(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.CustomObjectsApi(client.ApiClient(cfg))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status(code: int, reason: str, message: str, status: str = "Failure") -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": status, "reason": reason, "message": message, "code": code}


@pytest.fixture
def kube():
    servers: list[FakeKubeApi] = []

    def make(*args, **kwargs) -> FakeKubeApi:
        servers.append(FakeKubeApi(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def mined(tmp_path) -> Path:
    d = tmp_path / "mined"
    d.mkdir()
    (d / "train.jsonl").write_text('{"anchor": "q", "positive": "p", "negative_1": "n"}\n')
    (d / "manifest.json").write_text(json.dumps({"stage": "mine"}))
    return d


def _cfg(tmp_path, **trainjob):
    from embedforge.config import TrainConfig

    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    return TrainConfig(nodes=2, epochs=2.0, trainjob={"shared_mount": str(shared), "poll_s": 0.01, **trainjob})


def _nodes_write_model(body: dict) -> None:
    """What rank 0 of the nodes leaves on the shared volume when training succeeds."""
    from embedforge.contracts import StageTimer

    args = body["spec"]["trainer"]["args"]
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True)
    (out / "modules.json").write_text("[]")
    StageTimer("train").write_manifest(out, counts={"examples": 1}, base_model="m", prompts={}, final_loss=0.5,
                                       loss_history=[], train_seconds=0.1, examples_per_second=9.0, device="cuda",
                                       precision="bf16", base_weight=0.0, processes=2)


# ---------------------------------------------------------------------------------------------- the object
def test_generated_trainjob_is_a_valid_trainjob():
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    from embedforge.cluster.trainjob import build_trainjob
    from embedforge.config import TrainConfig

    cfg = TrainConfig(nodes=4, trainjob={"gpus_per_node": 8, "shared_pvc": "team-rwx", "shared_mount": "/shared"})
    obj = build_trainjob("embedforge-train-1", cfg, "reg.example/embedforge@sha256:ab", "/shared/m", "/shared/o",
                         "/shared/t.yaml").to_dict()
    # every field is one the TrainJob model knows, typed as it wants (nothing dropped on a round trip)
    assert TrainerV1alpha1TrainJob.from_dict(obj).to_dict() == obj
    assert (obj["apiVersion"], obj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    spec = obj["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["command"] == ["torchrun", "-m", "embedforge.stages.train"]
    assert trainer["args"] == ["--mined", "/shared/m", "--out", "/shared/o", "--config", "/shared/t.yaml"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    template = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    template = template["template"]["spec"]["template"]
    # the label the prod NetworkPolicy trainjob-pod-to-pod admits between a TrainJob's nodes
    from embedforge.cluster.trainjob import POD_LABEL

    assert template["metadata"]["labels"] == {POD_LABEL: "true"}
    pod = template["spec"]
    claim = {v["name"]: v for v in pod["volumes"]}["embedforge-shared"]["persistentVolumeClaim"]["claimName"]
    assert claim == "team-rwx"
    assert {"name": "embedforge-shared", "mountPath": "/shared"} in pod["containers"][0]["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["activeDeadlineSeconds"] == 86400


@pytest.mark.parametrize("status, expected", [
    ({}, ("Running", "no status yet")),
    (PENDING, ("Running", "node active=0 ready=0 succeeded=0 failed=0")),
    (COMPLETE, ("Complete", "JobsCompleted: TrainJob is completed")),
    (FAILED, ("Failed", "FailedJobs: jobset failed: node-0 exited with code 1 (CUDA out of memory)")),
    ({"conditions": [_condition("Suspended", "True", "Suspended", "queued by Kueue")]},
     ("Running", "Suspended=True (Suspended)")),
])
def test_job_state(status, expected):
    from embedforge.cluster.trainjob import job_state

    assert job_state({"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "status": status}) == expected


# ------------------------------------------------------------------------------------ submit / wait / clean up
def test_succeeded_job_delivers_the_model_and_cleans_up(tmp_path, kube, mined, caplog):
    from embedforge.cluster import trainjob

    seen: dict = {}

    def nodes(body: dict) -> None:  # the staged inputs are on the shared volume when the job is created
        args = body["spec"]["trainer"]["args"]
        seen["mined"] = sorted(p.name for p in Path(args[args.index("--mined") + 1]).iterdir())
        seen["config"] = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text())
        _nodes_write_model(body)

    api = kube([{}, PENDING, RUNNING, RUNNING, COMPLETE], on_create=nodes)
    cfg = _cfg(tmp_path)
    caplog.set_level("INFO", logger="embedforge.cluster.trainjob")
    manifest = trainjob.run(mined, tmp_path / "model", cfg, base_model="all-MiniLM-L6-v2", api=api.api(),
                            namespace=NS, image="img", job_name="embedforge-train-ok")
    assert manifest.stage == "train" and (tmp_path / "model" / "modules.json").is_file()
    assert seen["mined"] == ["manifest.json", "train.jsonl"]
    assert seen["config"]["train"]["nodes"] == 1 and seen["config"]["train"]["epochs"] == 2.0
    assert seen["config"]["base_model"] == "all-MiniLM-L6-v2"
    # the work folder is on the shared volume: a resubmitted job's nodes find the finished probes and checkpoint
    assert seen["config"]["train"]["work_dir"] == str(Path(cfg.trainjob.shared_mount) / "train_work")
    # every status change was reported once, in order
    states = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TrainJob ")]
    assert [s.split(": ", 1)[1].split(" ")[0] for s in states] == ["Running", "Running", "Running", "Complete"]
    # cleaned up: the job deleted (its pods with it) and the staging folder gone
    assert api.deleted == [("embedforge-train-ok", {"propagationPolicy": "Background"})] and api.jobs == {}
    assert list((Path(cfg.trainjob.shared_mount) / "trainjobs").iterdir()) == []
    assert set(api.calls) == {("create", "trainjobs"), ("get", "trainjobs"), ("delete", "trainjobs")}


def test_a_base_model_folder_local_to_the_step_is_staged_for_the_nodes(tmp_path, kube, mined):
    """A base model imported as a KFP artifact sits in the step's pod only: it goes onto the shared volume too."""
    from embedforge.cluster import trainjob

    local_model = tmp_path / "pod-local" / "base"
    local_model.mkdir(parents=True)
    (local_model / "config.json").write_text("{}")
    seen: dict = {}

    def nodes(body: dict) -> None:
        args = body["spec"]["trainer"]["args"]
        seen["base_model"] = yaml.safe_load(Path(args[args.index("--config") + 1]).read_text())["base_model"]
        seen["files"] = sorted(p.name for p in Path(seen["base_model"]).iterdir())
        _nodes_write_model(body)

    cfg = _cfg(tmp_path)
    trainjob.run(mined, tmp_path / "model", cfg, base_model=str(local_model),
                 api=kube([COMPLETE], on_create=nodes).api(), namespace=NS, image="img", job_name="embedforge-train-bm")
    assert Path(cfg.trainjob.shared_mount) in Path(seen["base_model"]).parents and seen["files"] == ["config.json"]
    assert list((Path(cfg.trainjob.shared_mount) / "trainjobs").iterdir()) == []  # cleaned up with the run


def test_failed_job_raises_with_the_reason_and_cleans_up(tmp_path, kube, mined):
    from embedforge.cluster import trainjob

    api = kube([RUNNING, FAILED])
    cfg = _cfg(tmp_path)
    with pytest.raises(trainjob.TrainJobError, match=r"failed: FailedJobs: .*CUDA out of memory"):
        trainjob.run(mined, tmp_path / "model", cfg, "m", api=api.api(), namespace=NS, image="img",
                     job_name="embedforge-train-bad")
    assert api.deleted and api.jobs == {} and not (tmp_path / "model").exists()
    assert list((Path(cfg.trainjob.shared_mount) / "trainjobs").iterdir()) == []


def test_stuck_job_times_out_and_is_deleted(tmp_path, kube, mined):
    from embedforge.cluster import trainjob

    api = kube([PENDING])  # nodes never scheduled (no GPUs free): no verdict, ever
    cfg = _cfg(tmp_path, timeout_s=0.3)
    with pytest.raises(trainjob.TrainJobError, match=r"did not finish within 0.3s .*last status: node active=0"):
        trainjob.run(mined, tmp_path / "model", cfg, "m", api=api.api(), namespace=NS, image="img",
                     job_name="embedforge-train-stuck")
    assert api.gets >= 2 and api.deleted and api.jobs == {}


def test_completed_without_a_model_is_an_error(tmp_path, kube, mined):
    from embedforge.cluster import trainjob

    api = kube([COMPLETE])
    with pytest.raises(trainjob.TrainJobError, match="completed but wrote no model"):
        trainjob.run(mined, tmp_path / "model", _cfg(tmp_path), "m", api=api.api(), namespace=NS, image="img")
    assert api.deleted


def test_forbidden_submission_names_the_rbac_file(tmp_path, kube, mined):
    from embedforge.cluster import trainjob

    api = kube([COMPLETE], create_status=403)
    cfg = _cfg(tmp_path)
    with pytest.raises(trainjob.TrainJobError, match=r"HTTP 403: .*manifests/base/trainjob-rbac.yaml"):
        trainjob.run(mined, tmp_path / "model", cfg, "m", api=api.api(), namespace=NS, image="img")
    assert list((Path(cfg.trainjob.shared_mount) / "trainjobs").iterdir()) == []


def test_shared_volume_must_be_mounted(tmp_path, mined):
    from embedforge.cluster import trainjob
    from embedforge.config import TrainConfig
    from embedforge.errors import ConfigError

    cfg = TrainConfig(nodes=2, trainjob={"shared_mount": str(tmp_path / "not-mounted")})
    with pytest.raises(ConfigError, match="not-mounted is not mounted in the train step"):
        trainjob.run(mined, tmp_path / "model", cfg, "m", api=object(), namespace=NS, image="img")


def test_role_grants_exactly_what_the_train_step_uses(tmp_path, kube, mined):
    """manifests/base/trainjob-rbac.yaml: create/get/delete on trainjobs, nothing else (what the client used)."""
    from embedforge.cluster import trainjob

    api = kube([RUNNING, COMPLETE], on_create=_nodes_write_model)
    trainjob.run(mined, tmp_path / "model", _cfg(tmp_path), "m", api=api.api(), namespace=NS, image="img")
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "base" / "trainjob-rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {(verb, res) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
               if rule["apiGroups"] == ["trainer.kubeflow.org"]}
    assert len(role["rules"]) == 1 and granted == set(api.calls)
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "embedforge-pipeline"}]


def test_train_component_with_nodes_runs_a_trainjob(tmp_path, kube, mined, monkeypatch):
    """The KFP train step with train.nodes=2 goes through a TrainJob, reaching the API server through a kubeconfig
    as the kubernetes client finds it (in a pod: the ServiceAccount), and logs the nodes' metrics."""
    from embedforge.components.train.component import train
    from kfp import dsl

    api = kube([RUNNING, COMPLETE], on_create=_nodes_write_model)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "step", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "step", "namespace": NS}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("EMBEDFORGE_IMAGE", "reg.example/embedforge@sha256:0123")
    cfg = _cfg(tmp_path, namespace=NS).model_dump(mode="json")
    model, metrics = dsl.Model(uri=str(tmp_path / "model")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    train.python_func(mined=dsl.Dataset(uri=str(mined)), base_model="m", config=cfg, prompts={}, model=model,
                      metrics=metrics)
    assert (tmp_path / "model" / "modules.json").is_file() and api.deleted
    assert metrics.metadata["final_loss"] == 0.5 and metrics.metadata["examples"] == 1
    assert [b["spec"]["trainer"]["image"] for b in api.created] == ["reg.example/embedforge@sha256:0123"]

"""The Kubernetes manifests as a platform engineer would check them, without a cluster.

Every overlay is rendered with ``kubectl kustomize`` and validated strictly (unknown fields are errors) against the
Kubernetes 1.30 and the newest schemas that ``kubernetes-validate`` ships (offline). Then policy: restricted-profile
securityContexts, requests/limits and probes on every container, no Secret rendered from the repository (users
create them; ``.example`` files are documentation), every Secret that a manifest or the compiled pipeline uses is
documented in the runbook docs/kubernetes.md, the prod NetworkPolicies admit exactly the intended traffic
(evaluated over the rendered policies and the pod labels the compiled pipeline sets), and the overlay-specific
choices (sqlite + Recreate in dev, PostgreSQL/S3/auth and a GPU in prod, a storageClassName on every claim).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import require

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").exists())
PIPELINE_YAML = REPO / "pipelines" / "embedforge.yaml"
#: Where each overlay deploys: the namespace its KFP runs the pipeline's pods in (standalone KFP: its own,
#: `kubeflow`; multi-user Kubeflow: the profile's, manifests/profile/embedforge.yaml).
NAMESPACES = {"dev": "kubeflow", "prod": "embedforge", "prod-standalone": "kubeflow"}
NAMESPACE = NAMESPACES["prod"]

require(shutil.which("kubectl") is not None, "kubectl (with kustomize)", "install kubectl >= 1.14")


def render(overlay: str) -> list[dict]:
    r = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """workload name -> pod spec, for every kind that has a pod template."""
    specs = {}
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            specs[f"{d['kind']}/{d['metadata']['name']}"] = spec["template"]["spec"]
        elif d["kind"] == "Pod":
            specs[f"Pod/{d['metadata']['name']}"] = spec
    return specs


def secrets_used(obj) -> set[str]:
    """Names of the Secrets an object (manifest or compiled pipeline) mounts or reads, at any depth."""
    found = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                found.add(value["name"])
            elif key == "secretName" and isinstance(value, str):
                found.add(value)
            else:
                found |= secrets_used(value)
    elif isinstance(obj, list):
        for item in obj:
            found |= secrets_used(item)
    return found


def test_there_are_dev_and_prod_overlays_for_both_kfp_modes():
    assert set(OVERLAYS) == set(NAMESPACES)


def test_the_multi_user_profile_names_the_prod_namespace():
    profile = yaml.safe_load((MANIFESTS / "profile" / "embedforge.yaml").read_text())
    assert profile["kind"] == "Profile" and profile["apiVersion"] == "kubeflow.org/v1"
    assert profile["metadata"]["name"] == NAMESPACES["prod"] and profile["spec"]["owner"]["kind"] == "User"


# -------------------------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_overlay_validates_strictly_against_kubernetes_schemas(overlay, version):
    import kubernetes_validate

    name, docs = overlay
    version = kubernetes_validate.latest_version() if version == "latest" else version
    errors = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert not errors, f"overlays/{name} against Kubernetes {version}:\n" + "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field():
    """The validator used above rejects what the API server would (a typo'd field name), not just bad YAML."""
    import kubernetes_validate

    deployment = by_kind(render("dev"), "Deployment")["mlflow"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


# --------------------------------------------------------------------------------------------- policy
#: The one container allowed to run as root: it gives the volume roots to uid 1000 (base/volume-init.yaml).
VOLUME_INIT = "Job/embedforge-volume-init"


def test_every_container_is_restricted_bounded_and_probed(overlay):
    name, docs = overlay
    problems = []
    for workload, spec in pod_specs(docs).items():
        if workload == VOLUME_INIT:
            continue  # checked below, against its own, narrower rule
        pod_sc = spec.get("securityContext", {})
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"overlays/{name} {workload} container {c['name']}"
            sc = c.get("securityContext", {})
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(kind, {}):
                        problems.append(f"{where}: no {kind}.{r}")
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot not set")
            if sc.get("runAsUser", pod_sc.get("runAsUser", 1)) == 0:
                problems.append(f"{where}: runs as UID 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities not dropped (ALL)")
            if sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if c.get("ports"):  # a server
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in c:
                        problems.append(f"{where}: server without {probe}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"overlays/{name} {workload}: mounts an API token it does not need")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"overlays/{name} {workload}: shares a host namespace")
    assert pod_specs(docs) and not problems, "\n".join(problems)


def test_every_object_lands_in_the_pipeline_namespace_and_none_creates_or_relabels_one(overlay):
    """KFP owns the namespace (standalone) or the profile controller makes it (multi-user): an overlay that
    applied a Namespace would relabel KFP's or fight the controller."""
    name, docs = overlay
    stray = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["metadata"].get("namespace") != NAMESPACES[name]]
    assert not stray, f"overlays/{name}: not in namespace {NAMESPACES[name]}: {stray}"
    assert not by_kind(docs, "Namespace")


def test_in_kfps_own_namespace_no_policy_touches_kfps_pods():
    """prod-standalone shares `kubeflow` with KFP: its policies must not isolate KFP's API server, UI, MinIO,
    database or the Argo pods of other pipelines."""
    policies = list(by_kind(render("prod-standalone"), "NetworkPolicy").values())
    for labels in ({"app": "ml-pipeline"}, {"app": "ml-pipeline-ui"}, {"app": "minio"}, {"app": "mysql"},
                   {"workflows.argoproj.io/workflow": "other-pipeline-x7k2"}, {}):
        pod = {"ns": "kubeflow", "labels": labels}
        assert admits(policies, pod, 8888, {"ns": "elsewhere", "ns_labels": {}, "labels": {}}), labels


def test_no_secret_comes_from_the_repository(overlay):
    name, docs = overlay
    assert not by_kind(docs, "Secret"), f"overlays/{name} renders Secrets: users create them (docs/kubernetes.md)"


def test_no_kustomization_reads_an_example_file():
    offenders = []
    for k in MANIFESTS.rglob("kustomization.yaml"):
        text = k.read_text()
        offenders += [f"{k.relative_to(REPO)}: {m}" for m in re.findall(r"[\w./-]+\.example\b", text)]
        if "secretGenerator" in yaml.safe_load(text):
            offenders.append(f"{k.relative_to(REPO)}: secretGenerator (Secrets are created by the user)")
    assert not offenders, "\n".join(offenders)


def _deploy_section() -> str:
    """The deployment runbook (docs/kubernetes.md, "Deploy on Kubernetes")."""
    runbook = (REPO / "docs" / "kubernetes.md").read_text()
    assert runbook.startswith("# Deploy on Kubernetes"), "docs/kubernetes.md is no longer the deployment runbook"
    return runbook


def test_every_secret_used_is_documented_with_its_create_command():
    section = _deploy_section()
    used = set()
    for o in OVERLAYS:
        used |= secrets_used(render(o))
    used |= secrets_used(list(yaml.safe_load_all(PIPELINE_YAML.read_text())))
    assert {"embedforge-llm", "embedforge-mlflow", "embedforge-mlflow-store", "embedforge-mlflow-auth",
            "embedforge-triton-admin"} <= used
    undocumented = [s for s in sorted(used) if not re.search(rf"create secret generic {re.escape(s)}\b", section)]
    assert not undocumented, f"docs/kubernetes.md lacks `kubectl create secret generic` for {undocumented}"


def test_pipeline_role_is_least_privilege():
    role = by_kind(render("prod"), "Role")["embedforge-pipeline"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"list", "watch", "delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
            rule["verbs"]) or rule["apiGroups"] != [""], rule
        if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
            assert rule.get("resourceNames") and rule["verbs"] == ["get"], rule
    leases = [r for r in role["rules"] if r["apiGroups"] == ["coordination.k8s.io"]]  # the promotion lock
    assert leases == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                       "verbs": ["create", "get", "update", "delete"]}]
    for o in OVERLAYS:
        binding = by_kind(render(o), "RoleBinding")["embedforge-pipeline"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "embedforge-pipeline",
                                        "namespace": NAMESPACES[o]}], o


def test_every_claim_names_a_storage_class(overlay):
    name, docs = overlay
    claims = by_kind(docs, "PersistentVolumeClaim")
    assert {"embedforge-data", "embedforge-model-repository"} <= set(claims)
    assert all(c["spec"].get("storageClassName") for c in claims.values()), f"overlays/{name}"


# ------------------------------------------------------------------------------------ overlay choices
def _container(docs: list[dict], deployment: str) -> dict:
    return by_kind(docs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_dev_is_single_node_sqlite_with_recreate_and_cpu_triton():
    docs = render("dev")
    mlflow = by_kind(docs, "Deployment")["mlflow"]
    assert mlflow["spec"]["strategy"]["type"] == "Recreate" and mlflow["spec"]["replicas"] == 1
    env = _env(_container(docs, "mlflow"))
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:////mlflow/")
    mounts = {m["mountPath"]: m["name"] for m in _container(docs, "mlflow")["volumeMounts"]}
    volumes = {v["name"]: v for v in mlflow["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/mlflow"]]["persistentVolumeClaim"]["claimName"] == "embedforge-mlflow"
    assert all(c["spec"]["accessModes"] == ["ReadWriteOnce"] for c in by_kind(docs, "PersistentVolumeClaim").values())
    triton = _container(docs, "triton")["resources"]
    assert not any("gpu" in k for k in {**triton["requests"], **triton["limits"]})
    assert not by_kind(docs, "NetworkPolicy")


def test_prod_mlflow_uses_postgres_s3_and_auth_from_user_secrets():
    docs = render("prod")
    mlflow = by_kind(docs, "Deployment")["mlflow"]
    c = _container(docs, "mlflow")
    assert mlflow["spec"]["replicas"] >= 2 and "--app-name=basic-auth" in c["args"]
    assert [e["secretRef"]["name"] for e in c["envFrom"]] == ["embedforge-mlflow-store"]
    env = _env(c)
    assert "MLFLOW_BACKEND_STORE_URI" not in env and "MLFLOW_ARTIFACTS_DESTINATION" not in env  # from the Secret
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["secretKeyRef"]["name"] == "embedforge-mlflow-auth"
    assert not any("sqlite" in str(v) for v in env.values())
    assert c["image"].split("/")[-1].split(":")[0] == "embedforge-mlflow"
    assert not [v for v in mlflow["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    example = (MANIFESTS / "secrets" / "mlflow-store.env.example").read_text()
    assert "MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://" in example and "MLFLOW_ARTIFACTS_DESTINATION=s3://" in example


def test_prod_triton_has_a_gpu_and_rwx_repository():
    docs = render("prod")
    res = _container(docs, "triton")["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1
    assert by_kind(docs, "PersistentVolumeClaim")["embedforge-model-repository"]["spec"]["accessModes"] == [
        "ReadWriteMany"]


def test_prod_triton_survives_a_rollout_and_a_drain():
    """Two replicas, replaced one at a time (old pod first: its GPU is freed), one kept through voluntary
    disruptions by a PodDisruptionBudget that selects the Triton pods."""
    docs = render("prod")
    triton = by_kind(docs, "Deployment")["triton"]
    assert triton["spec"]["replicas"] >= 2
    assert triton["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    pdb = by_kind(docs, "PodDisruptionBudget")["triton"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()


def test_triton_repository_api_is_locked_on_both_protocols_by_the_admin_secret():
    for o in OVERLAYS:
        c = _container(render(o), "triton")
        cmd = " ".join(c.get("command", []) + c.get("args", []))
        for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
            assert re.search(rf"{flag}=\S*model-repository\S*:embedforge-admin-key=\$\$\{{EMBEDFORGE_TRITON_ADMIN_KEY",
                             cmd), (o, flag)
        assert "--model-control-mode=explicit" in cmd
        assert _env(c)["EMBEDFORGE_TRITON_ADMIN_KEY"] == {"secretKeyRef": {"name": "embedforge-triton-admin",
                                                                            "key": "admin-key"}}
    # the promote step gets the same key under the name embedforge.serving.client reads
    from embedforge.serving.client import ADMIN_KEY_ENV

    platform = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))[1]
    promote = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-promote"]
    assert any(e["secretName"] == "embedforge-triton-admin"
               and e["keyToEnv"] == [{"secretKey": "admin-key", "envVar": ADMIN_KEY_ENV}]
               for e in promote["secretAsEnv"]), promote["secretAsEnv"]


# ------------------------------------------------------------------------- NetworkPolicy semantics
def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the evaluator handles matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policies: list[dict], target: dict, port: int, source: dict) -> bool:
    """Standard NetworkPolicy ingress semantics: a pod selected by no Ingress policy accepts everything; otherwise
    some rule of some selecting policy must match both the port and the peer. Pods: {ns, ns_labels, labels}."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == target["ns"]
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _selects(p["spec"]["podSelector"], target["labels"])]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            port_ok = not rule.get("ports") or any(pp["port"] == port for pp in rule["ports"])
            peer_ok = not rule.get("from") or any(
                ("namespaceSelector" in peer and _selects(peer["namespaceSelector"], source["ns_labels"])
                 or "namespaceSelector" not in peer and source["ns"] == target["ns"])
                and ("podSelector" not in peer or _selects(peer["podSelector"], source["labels"]))
                for peer in rule["from"])
            if port_ok and peer_ok:
                return True
    return False


def _step_labels() -> dict[str, dict]:
    platform = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {name.removeprefix("exec-"): ex.get("podMetadata", {}).get("labels", {}) for name, ex in executors.items()}


@pytest.mark.parametrize("name", ["prod", "prod-standalone"])
def test_prod_network_policies_admit_exactly_the_intended_traffic(name):
    docs = render(name)
    ns = NAMESPACES[name]
    policies = list(by_kind(docs, "NetworkPolicy").values())
    ports = {p["name"]: p["containerPort"] for p in _container(docs, "triton")["ports"]}
    mlflow_port = _container(docs, "mlflow")["ports"][0]["containerPort"]
    deployments = by_kind(docs, "Deployment")
    triton = {"ns": ns, "labels": deployments["triton"]["spec"]["template"]["metadata"]["labels"]}
    mlflow = {"ns": ns, "labels": deployments["mlflow"]["spec"]["template"]["metadata"]["labels"]}
    home = {"kubernetes.io/metadata.name": ns}
    steps = _step_labels()
    promote = {"ns": ns, "ns_labels": home, "labels": steps["promote"]}
    register = {"ns": ns, "ns_labels": home, "labels": steps["register"]}
    stranger = {"ns": ns, "ns_labels": home, "labels": {"app": "something-else"}}
    app = {"ns": "shop", "ns_labels": {"kubernetes.io/metadata.name": "shop", "embedforge.io/inference-client": "true"},
           "labels": {"app": "shop"}}
    other_ns = {"ns": "elsewhere", "ns_labels": {"kubernetes.io/metadata.name": "elsewhere"}, "labels": {}}

    # applications: inference over gRPC and HTTP (the repository API there needs the admin key they lack)
    assert admits(policies, triton, ports["grpc"], app) and admits(policies, triton, ports["http"], app)
    assert admits(policies, triton, ports["http"], promote)
    assert not admits(policies, triton, ports["http"], register), "only promote loads models"
    assert not admits(policies, triton, ports["grpc"], other_ns)
    assert not admits(policies, triton, ports["http"], stranger)
    for step in steps:
        assert admits(policies, mlflow, mlflow_port, {"ns": ns, "ns_labels": home, "labels": steps[step]}), step
        # nothing connects to a step
        assert not admits(policies, {"ns": ns, "labels": steps[step]}, 8080, stranger), step
    assert not admits(policies, mlflow, mlflow_port, app)
    assert not admits(policies, mlflow, mlflow_port, stranger)

    # a multi-node TrainJob: its pods (labelled by embedforge.cluster.trainjob) reach each other on any port
    from embedforge.cluster.trainjob import POD_LABEL

    node = {"ns": ns, "ns_labels": home, "labels": {POD_LABEL: "true", "jobset.sigs.k8s.io/jobset-name": "t1"}}
    assert admits(policies, node, 29500, node) and admits(policies, node, 41234, node)
    assert not admits(policies, node, 29500, stranger)

    # the rollback pod of docs/kubernetes.md passes with its labels
    rollback = {"ns": ns, "ns_labels": home, "labels": _rollback_pod_labels()}
    assert admits(policies, triton, ports["http"], rollback) and admits(policies, mlflow, mlflow_port, rollback)

    # the OpenAI-compatible embeddings API: applications reach it, it reaches Triton's HTTP inference, nothing else
    api_labels = deployments["embeddings-api"]["spec"]["template"]["metadata"]["labels"]
    api = {"ns": ns, "labels": api_labels}
    api_port = _container(docs, "embeddings-api")["ports"][0]["containerPort"]
    api_client = {"ns": ns, "ns_labels": home, "labels": api_labels}
    assert admits(policies, api, api_port, app)
    assert not admits(policies, api, api_port, other_ns) and not admits(policies, api, api_port, stranger)
    assert not admits(policies, api, api_port, promote), "pipeline steps do not call the API"
    assert admits(policies, triton, ports["http"], api_client)
    assert not admits(policies, triton, ports["grpc"], api_client) and not admits(policies, triton, ports["metrics"],
                                                                                  api_client)
    assert not admits(policies, mlflow, mlflow_port, api_client)


def test_embeddings_api_serves_the_ensemble_from_the_component_image(overlay):
    """Two replicas of `embedforge serve` in the component image, calling Triton's Service over HTTP for the
    ensemble promote publishes, reading the repository read-only (usage tokens), probed on NIM's paths, behind a
    Service on 8080."""
    from embedforge.config import TritonConfig

    _, docs = overlay
    deployment = by_kind(docs, "Deployment")["embeddings-api"]
    c = _container(docs, "embeddings-api")
    assert deployment["spec"]["replicas"] == 2
    assert c["image"].split("/")[-1].split(":")[0] == "embedforge" and c["image"].endswith("-cpu"), c["image"]
    assert c["command"] == ["embedforge", "serve"]
    args = dict(a.removeprefix("--").split("=", 1) for a in c["args"])
    # the command parses these very arguments (names, types, ranges) as the container will run them
    from typer.main import get_command

    from embedforge.cli import app

    parsed = get_command(app).commands["serve"].make_context("serve", list(c["args"])).params
    assert parsed["url"] == args["url"] and parsed["port"] == int(args["port"]) and parsed["host"] == "0.0.0.0"
    assert str(parsed["repository"]) == args["repository"]
    triton_http = {p["name"]: p["containerPort"] for p in _container(docs, "triton")["ports"]}["http"]
    triton_svc = by_kind(docs, "Service")["triton"]
    assert args["url"] == f"http://triton:{triton_http}" and any(p["port"] == triton_http
                                                                 for p in triton_svc["spec"]["ports"])
    assert args["model"] == TritonConfig.model_fields["model_name"].default and args["port"] == "8080"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mounts[args["repository"]]["readOnly"] is True
    assert volumes[mounts[args["repository"]]["name"]]["persistentVolumeClaim"]["claimName"] == \
        "embedforge-model-repository"
    assert c["startupProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert "EMBEDFORGE_TRITON_ADMIN_KEY" not in _env(c), "inference needs no admin key"
    svc = by_kind(docs, "Service")["embeddings-api"]
    assert svc["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]


def _rollback_pod_labels() -> dict[str, str]:
    labels = re.search(r"kubectl -n \S+ run rollback .*?--labels=(\S+)", _deploy_section(), re.S).group(1)
    return dict(kv.split("=") for kv in labels.split(","))


def test_evaluator_admits_everything_without_policies():
    """The evaluator's baseline (so the denials above come from the policies): no policy, no isolation."""
    pod = {"ns": NAMESPACE, "labels": {"app": "triton"}}
    assert admits([], pod, 8000, {"ns": "x", "ns_labels": {}, "labels": {}})


# ------------------------------------------------------------------------- Triton flags, on a real server
def _triton_argv(overlay: str, admin_key: str | None) -> subprocess.CompletedProcess:
    """The Triton container's argv as the pod runs it (kubelet turns ``$$`` into ``$``, then ``sh -c`` expands),
    with the admin Secret's value in the environment as the pod spec maps it (None: the Secret is missing)."""
    c = _container(render(overlay), "triton")
    assert c["command"] == ["/bin/sh", "-c"] and len(c["args"]) == 1, c
    script = c["args"][0].replace("$$", "$").replace("exec tritonserver", "exec printf '%s\\n'", 1)
    env = {"PATH": "/usr/bin:/bin"} | ({"EMBEDFORGE_TRITON_ADMIN_KEY": admin_key} if admin_key is not None else {})
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)


def test_triton_refuses_to_start_without_the_admin_secret():
    r = _triton_argv("prod", None)
    assert r.returncode != 0 and "embedforge-triton-admin" in r.stderr


def test_manifest_flags_lock_the_repository_api_on_a_real_tritonserver(tmp_path, monkeypatch):
    """Start the real tritonserver (PyPI nvidia-pytriton, via tests/support/triton_server.py) with the manifest's
    flags: over gRPC and HTTP, health and inference-side calls work without the key, the repository API is refused
    without it and answers with it — over HTTP through embedforge's own client (what promote and rollback use)."""
    triton_server = pytest.importorskip("triton_server", reason="needs tests/support/triton_server.py (real tritonserver)")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from mlflow_server import free_port
    from tritonclient.utils import InferenceServerException

    from embedforge.serving.client import ADMIN_HEADER, ADMIN_KEY_ENV, http_client

    key = "s3cr3t-" + "a1" * 12
    argv = _triton_argv("prod", key).stdout.splitlines()
    restricted = [a for a in argv if a.startswith(("--grpc-restricted-protocol=", "--http-restricted-api="))]
    assert len(restricted) == 2 and "--load-model=*" in argv, argv
    assert all(a.endswith(f":{ADMIN_HEADER}={key}") for a in restricted), restricted

    grpc_port = free_port()
    server = triton_server.TritonServer(
        tmp_path / "repo", triton_server.ensure_runtime(), log_dir=tmp_path,
        extra_args=("--allow-grpc=true", "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}", *restricted),
    ).start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_live() and client.is_server_ready()
        for call in (client.get_model_repository_index, lambda: client.load_model("embedforge_embedder"),
                     lambda: client.unload_model("embedforge_embedder")):
            with pytest.raises(InferenceServerException):
                call()
        # with the header (Triton prefixes the key over gRPC) the call goes through: a restriction, not an outage
        assert client.get_model_repository_index(headers={f"triton-grpc-protocol-{ADMIN_HEADER}": key}) is not None

        http = http_client(server.url)
        assert http.is_server_live()
        with pytest.raises(InferenceServerException):
            http.get_model_repository_index()
        with pytest.raises(InferenceServerException):
            http.get_model_repository_index(headers={ADMIN_HEADER: "guess"})
        assert http.get_model_repository_index(headers={ADMIN_HEADER: key}) == []
        monkeypatch.setenv(ADMIN_KEY_ENV, key)
        assert server.ready() == []  # the tests' own helper sends the key from the environment, as promote does
    finally:
        server.stop()

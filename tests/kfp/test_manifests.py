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
NAMESPACE = "embedforge"

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


def test_there_are_dev_and_prod_overlays():
    assert {"dev", "prod"} <= set(OVERLAYS)


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
def test_every_container_is_restricted_bounded_and_probed(overlay):
    name, docs = overlay
    problems = []
    for workload, spec in pod_specs(docs).items():
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


def test_every_namespaced_object_lands_in_the_namespace(overlay):
    name, docs = overlay
    cluster_scoped = {"Namespace"}
    stray = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
             if d["kind"] not in cluster_scoped and d["metadata"].get("namespace") != NAMESPACE]
    assert not stray, f"overlays/{name}: not in namespace {NAMESPACE}: {stray}"


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
    assert {"embedforge-llm", "embedforge-mlflow", "embedforge-mlflow-store", "embedforge-mlflow-auth"} <= used
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
    binding = by_kind(render("prod"), "RoleBinding")["embedforge-pipeline"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "embedforge-pipeline", "namespace": NAMESPACE}]


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


def test_triton_grpc_repository_api_is_locked():
    for o in OVERLAYS:
        c = _container(render(o), "triton")
        cmd = " ".join(c.get("command", []) + c.get("args", []))
        assert re.search(r"--grpc-restricted-protocol=\S*model-repository", cmd), o
        assert "--model-control-mode=explicit" in cmd


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


def test_prod_network_policies_admit_exactly_the_intended_traffic():
    docs = render("prod")
    policies = list(by_kind(docs, "NetworkPolicy").values())
    ports = {p["name"]: p["containerPort"] for p in _container(docs, "triton")["ports"]}
    mlflow_port = _container(docs, "mlflow")["ports"][0]["containerPort"]
    deployments = by_kind(docs, "Deployment")
    triton = {"ns": NAMESPACE, "labels": deployments["triton"]["spec"]["template"]["metadata"]["labels"]}
    mlflow = {"ns": NAMESPACE, "labels": deployments["mlflow"]["spec"]["template"]["metadata"]["labels"]}
    home = {"kubernetes.io/metadata.name": NAMESPACE}
    steps = _step_labels()
    promote = {"ns": NAMESPACE, "ns_labels": home, "labels": steps["promote"]}
    register = {"ns": NAMESPACE, "ns_labels": home, "labels": steps["register"]}
    stranger = {"ns": NAMESPACE, "ns_labels": home, "labels": {"app": "something-else"}}
    app = {"ns": "shop", "ns_labels": {"kubernetes.io/metadata.name": "shop", "embedforge.io/inference-client": "true"},
           "labels": {"app": "shop"}}
    other_ns = {"ns": "elsewhere", "ns_labels": {"kubernetes.io/metadata.name": "elsewhere"}, "labels": {}}

    assert admits(policies, triton, ports["grpc"], app)
    assert not admits(policies, triton, ports["http"], app), "apps must not reach the HTTP repository API"
    assert admits(policies, triton, ports["http"], promote)
    assert not admits(policies, triton, ports["http"], register), "only promote loads models"
    assert not admits(policies, triton, ports["grpc"], other_ns)
    assert not admits(policies, triton, ports["http"], stranger)
    for step in steps:
        assert admits(policies, mlflow, mlflow_port, {"ns": NAMESPACE, "ns_labels": home, "labels": steps[step]}), step
    assert not admits(policies, mlflow, mlflow_port, app)
    assert not admits(policies, mlflow, mlflow_port, stranger)


def test_evaluator_admits_everything_without_policies():
    """The evaluator's baseline (so the denials above come from the policies): no policy, no isolation."""
    pod = {"ns": NAMESPACE, "labels": {"app": "triton"}}
    assert admits([], pod, 8000, {"ns": "x", "ns_labels": {}, "labels": {}})


# ------------------------------------------------------------------------- Triton flags, on a real server
def _triton_argv(overlay: str) -> list[str]:
    """The Triton container's argv as the pod runs it: kubelet turns ``$$`` into ``$``, then ``sh -c`` expands."""
    c = _container(render(overlay), "triton")
    assert c["command"] == ["/bin/sh", "-c"] and len(c["args"]) == 1, c
    script = c["args"][0].replace("$$", "$").replace("exec tritonserver", "exec printf '%s\\n'", 1)
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def test_manifest_flags_lock_the_grpc_repository_api_on_a_real_tritonserver(tmp_path):
    """Start the real tritonserver (PyPI nvidia-pytriton, via tests/support/triton_server.py) with the manifest's
    restriction flag: gRPC inference-side calls work, the gRPC repository API is refused without the header
    (whose value is random per start), and the HTTP repository API the promote step uses stays open."""
    triton_server = pytest.importorskip("triton_server", reason="needs tests/support/triton_server.py (real tritonserver)")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from mlflow_server import free_port
    from tritonclient.utils import InferenceServerException

    argv = _triton_argv("prod")
    restricted = [a for a in argv if a.startswith("--grpc-restricted-protocol=")]
    assert len(restricted) == 1 and "--load-model=*" in argv, argv
    key, _, value = restricted[0].split(":", 1)[1].partition("=")
    assert len(value) == 32 and value != _triton_argv("prod")[argv.index(restricted[0])].rpartition("=")[2]

    grpc_port = free_port()
    server = triton_server.TritonServer(
        tmp_path / "repo", triton_server.ensure_runtime(), log_dir=tmp_path,
        extra_args=("--allow-grpc=true", "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}", restricted[0]),
    ).start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_live() and client.is_server_ready()
        for call in (client.get_model_repository_index, lambda: client.load_model("embedforge_embedder"),
                     lambda: client.unload_model("embedforge_embedder")):
            with pytest.raises(InferenceServerException):
                call()
        # with the header (Triton prefixes the key) the call goes through: a restriction, not an outage
        assert client.get_model_repository_index(headers={f"triton-grpc-protocol-{key}": value}) is not None
        assert server.ready() == []  # HTTP repository API (what promote uses) answers
    finally:
        server.stop()

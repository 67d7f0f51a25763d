"""Multi-node training: the train step submits a Kubeflow Trainer v2 ``TrainJob``, waits for it, cleans up.

With ``train.nodes`` > 1 one pod is not enough, so the train step (still one KFP step, so caching, lineage and the
pipeline graph stay as they are) becomes a small controller:

1. **stage**: copy the mined rows to a run folder on the shared ReadWriteMany volume (``train.trainjob.shared_pvc``,
   mounted by the step and by every node) and write the training config there (``nodes: 1`` inside, so a node
   never submits a job of its own);
2. **submit** a ``TrainJob`` (:func:`build_trainjob`): ``numNodes`` nodes of the step's own image, each running
   ``torchrun -m embedforge.stages.train --mined ... --out ... --config ...`` — i.e. ``python -m embedforge.stages.train`` per
   process, with torchrun's rendezvous taken from the ``PET_*`` variables the Trainer's torch runtime injects;
   ``embedforge.distributed`` then splits each global contrastive batch over all ranks of all nodes;
3. **wait**, logging every status change (conditions, child-job counts); ``Complete`` -> copy the model from the
   volume into the step's output; ``Failed`` -> :class:`TrainJobError` with the controller's reason and message;
   no verdict within ``timeout_s`` (e.g. nodes stuck Pending for want of GPUs) -> :class:`TrainJobError`;
4. **clean up** whatever happened: delete the TrainJob (its JobSet and pods go with it) and the run folder.

Why TrainJob (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``) and not the older ``PyTorchJob``
(Training Operator v1, ``kubeflow.org/v1``): the Training Operator is superseded by Trainer v2 and is no longer
developed; v2 separates the platform's part (a ``ClusterTrainingRuntime``: torchrun launch, rendezvous,
gang-scheduling, JobSet topology, maintained by whoever runs the cluster) from ours (image, command, node count,
resources), so the job we submit is small and needs no Master/Worker replica specs; and its typed models ship
on PyPI (``kubeflow-trainer-api``), which :func:`build_trainjob` uses so the object is schema-checked before it
is sent.

The Kubernetes API is reached with the official ``kubernetes`` client (``CustomObjectsApi``): in-cluster
credentials of the step's ServiceAccount, which ``manifests/base/trainjob-rbac.yaml`` allows exactly
create/get/list/watch/delete on ``trainjobs``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.config import (
    ModelConfig,
    PromptsConfig,
    TrainConfig,
    train_worker_config,
    write_config,
)
from embedforge.contracts import Manifest, TrainResult, has_manifest, read_manifest
from embedforge.errors import ConfigError

if TYPE_CHECKING:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from kubernetes.client import CustomObjectsApi

log = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
#: The training entry every process of every node runs (``python -m embedforge.stages.train`` under torchrun).
ENTRY_MODULE = "embedforge.stages.train"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_SHARED_VOLUME = "embedforge-shared"
#: Label of every pod of a TrainJob this module submits (manifests/components/prod/networkpolicies.yaml).
POD_LABEL = "embedforge.io/trainjob"


class TrainJobError(ConfigError):
    """The TrainJob failed, timed out, or could not be submitted (the message says which and what to do)."""


# --------------------------------------------------------------------------------------------- the object
def build_trainjob(name: str, cfg: TrainConfig, image: str, mined_dir: str, out_dir: str, config_file: str,
                   labels: dict[str, str] | None = None) -> "TrainerV1alpha1TrainJob":
    """The ``TrainJob`` for ``cfg.nodes`` nodes, as the typed model of ``kubeflow-trainer-api``.

    Args:
        name: ``metadata.name`` (a DNS label).
        cfg: ``nodes`` and ``trainjob`` (runtime, resources, shared volume, timeout) are read.
        image: Image of the training container (the step's own).
        mined_dir, out_dir, config_file: Paths on the shared volume, as every node sees them.
        labels: Extra ``metadata.labels``.
    """
    from kubeflow_trainer_api import models as m

    tj = cfg.trainjob
    amounts = {"cpu": tj.cpu_per_node, "memory": tj.memory_per_node}
    if tj.gpus_per_node:
        amounts["nvidia.com/gpu"] = str(tj.gpus_per_node)
    resources = {k: m.IoK8sApimachineryPkgApiResourceQuantity(v) for k, v in amounts.items()}
    mount_patch = m.TrainerV1alpha1RuntimePatch.from_dict({
        "manager": "embedforge",
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": "node",
            "template": {"spec": {"template": {
                # what the prod NetworkPolicy trainjob-pod-to-pod admits between nodes (rendezvous, NCCL)
                "metadata": {"labels": {POD_LABEL: "true"}},
                "spec": {
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "volumes": [{"name": _SHARED_VOLUME, "persistentVolumeClaim": {"claimName": tj.shared_pvc}},
                            # NCCL needs more shared memory than a container's default 64 MiB /dev/shm
                            {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                "containers": [{
                    "name": "node",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": _SHARED_VOLUME, "mountPath": tj.shared_mount},
                                     {"name": "dshm", "mountPath": "/dev/shm"}],
                }],
            }}}},
        }]}}},
    })
    return m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, labels={"app.kubernetes.io/part-of": "embedforge", "embedforge/stage": "train",
                               **(labels or {})}),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(name=tj.runtime, api_group=GROUP, kind="ClusterTrainingRuntime"),
            active_deadline_seconds=int(tj.timeout_s),
            trainer=m.TrainerV1alpha1Trainer(
                image=image,
                command=["torchrun", "-m", ENTRY_MODULE],
                args=["--mined", mined_dir, "--out", out_dir, "--config", config_file],
                num_nodes=cfg.nodes,
                num_proc_per_node=max(tj.gpus_per_node, 1),
                resources_per_node=m.IoK8sApiCoreV1ResourceRequirements(limits=resources, requests=resources),
                env=[m.IoK8sApiCoreV1EnvVar(name="HF_HUB_OFFLINE", value="1"),
                     m.IoK8sApiCoreV1EnvVar(name="TOKENIZERS_PARALLELISM", value="false")],
            ),
            runtime_patches=[mount_patch],
        ),
    )


# ------------------------------------------------------------------------------------------------- status
def job_state(obj: dict[str, Any]) -> tuple[str, str]:
    """``(state, detail)`` of a TrainJob as the API returns it: state ``Complete``, ``Failed`` or ``Running``
    (anything not finished: created, pending, running, suspended); detail: the deciding condition's reason and
    message, or the child jobs' counts.

    Raises:
        TrainJobError: The object does not parse as a TrainJob.
    """
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from pydantic import ValidationError

    try:
        status = TrainerV1alpha1TrainJob.from_dict(obj).status
    except ValidationError as exc:
        raise TrainJobError(f"the API returned a TrainJob that does not parse: {exc.errors()[0]['msg']}") from None
    conditions = {c.type: c for c in (status.conditions or [])} if status else {}
    for verdict in ("Failed", "Complete"):
        c = conditions.get(verdict)
        if c is not None and c.status == "True":
            return verdict, f"{c.reason}: {c.message}".strip(": ")
    jobs = ", ".join(f"{j.name} active={j.active} ready={j.ready} succeeded={j.succeeded} failed={j.failed}"
                     for j in (status.jobs_status or [])) if status else ""
    open_conditions = ", ".join(f"{c.type}={c.status} ({c.reason})" for c in conditions.values())
    return "Running", "; ".join(x for x in (open_conditions, jobs) if x) or "no status yet"


def wait_for(api: "CustomObjectsApi", namespace: str, name: str, timeout_s: float, poll_s: float,
             on_status: Callable[[str, str], None] | None = None,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the TrainJob until ``Complete``; report every change of ``(state, detail)`` to ``on_status``
    (default: the log). Returns the final detail.

    Raises:
        TrainJobError: ``Failed`` (with the reason), deleted under us, or no verdict within ``timeout_s``.
    """
    from kubernetes.client.exceptions import ApiException

    report = on_status or (lambda state, detail: log.info("TrainJob %s/%s: %s (%s)", namespace, name, state, detail))
    deadline = clock() + timeout_s
    last: tuple[str, str] | None = None
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            raise _api_error(exc, f"read TrainJob {namespace}/{name}") from None
        state, detail = job_state(obj)
        if (state, detail) != last:
            report(state, detail)
            last = (state, detail)
        if state == "Complete":
            return detail
        if state == "Failed":
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {detail} "
                                f"(kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name})")
        if clock() >= deadline:
            raise TrainJobError(f"TrainJob {namespace}/{name} did not finish within {timeout_s:g}s "
                                f"(train.trainjob.timeout_s); last status: {detail}")
        sleep(min(poll_s, max(deadline - clock(), 0.0)))


def _api_error(exc: Exception, action: str) -> TrainJobError:
    status = getattr(exc, "status", None)
    hint = {
        403: "the train step's ServiceAccount may not do this: apply manifests/base/trainjob-rbac.yaml",
        404: "not found: is Kubeflow Trainer v2 installed (CRD trainjobs.trainer.kubeflow.org)?",
    }.get(status, getattr(exc, "reason", "") or str(exc))
    return TrainJobError(f"cannot {action}: HTTP {status}: {hint}")


def delete(api: "CustomObjectsApi", namespace: str, name: str) -> None:
    """Delete the TrainJob and, in the background, what it owns (JobSet, pods); a missing one is fine."""
    from kubernetes.client import V1DeleteOptions
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                            body=V1DeleteOptions(propagation_policy="Background"))
        log.info("deleted TrainJob %s/%s", namespace, name)
    except ApiException as exc:
        if exc.status != 404:
            log.warning("could not delete TrainJob %s/%s: %s", namespace, name, _api_error(exc, "delete"))


# --------------------------------------------------------------------------------------------- the stage
def custom_objects_api() -> "CustomObjectsApi":
    """A ``CustomObjectsApi`` with in-cluster credentials (the step's ServiceAccount), else ``~/.kube/config``."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)  # read now, not at import
    return client.CustomObjectsApi()


def default_namespace(cfg: TrainConfig) -> str:
    """``train.trainjob.namespace``, else the namespace of the pod we run in, else ``default``."""
    if cfg.trainjob.namespace:
        return cfg.trainjob.namespace
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def default_image(cfg: TrainConfig) -> str:
    """``train.trainjob.image``, else ``$EMBEDFORGE_IMAGE`` (the compiled pipeline sets the step's own image)."""
    from embedforge.cluster.image import BASE_IMAGE

    return cfg.trainjob.image or os.environ.get("EMBEDFORGE_IMAGE", "") or BASE_IMAGE


def run(mined_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, base_model: str,
        prompts: PromptsConfig | None = None, api: "CustomObjectsApi | None" = None,
        namespace: str = "", image: str = "", job_name: str = "", model_cfg: ModelConfig | None = None) -> Manifest:
    """Train on ``cfg.nodes`` nodes as a TrainJob and put the model into ``out_dir`` (see the module docstring).

    Args:
        mined_dir: The mine output folder (local to this pod).
        out_dir: Where the trained sentence-transformers folder goes (local to this pod).
        cfg: The train config (``nodes`` > 1, ``trainjob``).
        base_model: Base model name or folder; a folder outside the shared volume is staged onto it.
        prompts: Query/document prompts saved with the model.
        model_cfg: How the base model becomes an embedder (the pipeline's ``model`` section), passed to the nodes.
        api: A ``CustomObjectsApi``; default :func:`custom_objects_api`.
        namespace, image, job_name: Overrides of :func:`default_namespace`, :func:`default_image` and a
            generated ``embedforge-train-<8 hex>``.

    Returns:
        The manifest the training wrote (rank 0).

    Raises:
        TrainJobError: Submission refused, the job failed or timed out, or it finished without a model.
        ConfigError: ``cfg.nodes`` is 1 or the shared volume is not mounted here.
    """
    if cfg.nodes < 2:
        raise ConfigError("trainjob.run is for train.nodes > 1; one node trains in the step itself")
    shared = Path(cfg.trainjob.shared_mount)
    if not shared.is_dir():
        raise ConfigError(f"train.trainjob.shared_mount {shared} is not mounted in the train step: mount the "
                          f"claim {cfg.trainjob.shared_pvc} there (the compiled pipeline does)")
    api = api or custom_objects_api()
    namespace = namespace or default_namespace(cfg)
    name = job_name or f"embedforge-train-{uuid.uuid4().hex[:8]}"
    work = shared / "trainjobs" / name
    try:
        shutil.copytree(mined_dir, work / "mined")
        if Path(base_model).is_dir() and shared.resolve() not in Path(base_model).resolve().parents:
            # a folder only this pod sees (the base model imported as a KFP artifact): the nodes see the volume
            shutil.copytree(base_model, work / "base_model")
            base_model = str(work / "base_model")
        # the nodes train, they never submit a job themselves; the train step's work folder goes on the shared
        # volume, where a resubmitted job's nodes find the probes and checkpoint this one left (embedforge.stages.train.work)
        node_cfg = cfg.model_copy(update={"nodes": 1, "work_dir": cfg.work_dir or str(shared / "train_work")})
        write_config(work / "train.yaml", train_worker_config(node_cfg, base_model, prompts, model_cfg))
        job = build_trainjob(name, cfg, image or default_image(cfg), str(work / "mined"), str(work / "model"),
                             str(work / "train.yaml"))
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job.to_dict())
        except Exception as exc:  # noqa: BLE001 - ApiException or a connection error: one clear line either way
            raise _api_error(exc, f"create TrainJob {namespace}/{name}") from None
        log.info("submitted TrainJob %s/%s: %d nodes x %d processes, runtime %s", namespace, name, cfg.nodes,
                 max(cfg.trainjob.gpus_per_node, 1), cfg.trainjob.runtime)
        try:
            wait_for(api, namespace, name, cfg.trainjob.timeout_s, cfg.trainjob.poll_s)
        finally:
            delete(api, namespace, name)
        if not has_manifest(work / "model"):
            raise TrainJobError(f"TrainJob {namespace}/{name} completed but wrote no model to {work / 'model'}")
        shutil.copytree(work / "model", out_dir, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_manifest(out_dir, TrainResult)


__all__ = ["TrainJobError", "build_trainjob", "delete", "job_state", "run", "wait_for"]

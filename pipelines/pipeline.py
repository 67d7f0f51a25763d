"""The embedforge pipeline: documents -> fine-tuned, evaluated, exported, registered model, with a promotion gate.

Steps (one KFP component each, see ``components/<stage>/``):

1. ``ingest``   corpus folder / BEIR corpus.jsonl -> sentence chunks with a document-level train/eval split
2. ``sdg``      chunks -> (query, positive) pairs: offline generator, LLM generator, or bring-your-own pairs
3. ``validate`` Great Expectations suite over the pairs (fails the run on a failed expectation)
4. ``mine``     FAISS hard negatives with a positive-aware margin (+ base-model chunk embeddings, reused later)
5. ``train``    contrastive fine-tuning (InfoNCE over in-batch + hard negatives)
6. ``evaluate`` BEIR metrics, base vs fine-tuned, on the held-out split (+ an optional external BEIR folder)
7. ``export``   ONNX with pooling + normalisation in the graph, parity-checked with onnxruntime
8. ``register`` MLflow run (params, metrics, artifacts) + a new registered-model version
9. ``gate``     promote? fine-tuned beats base by a margin AND beats the current champion on the same eval set
10. ``promote`` (only under ``dsl.If(gate == True)``) set the champion alias + write the Triton model repository
11. ``report``  (after the gate, beside promote) ``report.html`` as a KFP HTML output, attached to the MLflow run

``build_pipeline(kubernetes=False)`` is the pipeline run locally by ``embedforge run`` (kfp.local);
``build_pipeline(kubernetes=True)`` adds what a cluster needs: GPU for training, resource requests, the inputs as
imported artifacts (or, ``inputs="pvc"``, the data volume on every step reading a path; ``pipelines/inputs.py``),
the Triton model-repository volume on promote (which then rolls the version out to the Triton Service),
and the LLM API key from a Kubernetes Secret (never a parameter).
"""


import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedforge.components._common import BASE_IMAGE
from embedforge.components.evaluate.component import evaluate
from embedforge.components.export.component import export
from embedforge.components.gate.component import gate
from embedforge.components.ingest.component import ingest
from embedforge.components.mine.component import mine
from embedforge.components.promote.component import promote
from embedforge.components.register.component import register
from embedforge.components.report.component import report
from embedforge.components.sdg.component import sdg
from embedforge.components.train.component import train
from embedforge.components.validate.component import validate
from embedforge.pipelines.inputs import (
    ARTIFACTS,
    BASE_MODEL_ID,
    INPUT_ROUTES,
    PATH_PARAMETERS,
    PVC,
    URI_PARAMETERS,
    Inputs,
    import_inputs,
)
from kfp import dsl

from embedforge.config import PipelineConfig
from embedforge.serving.client import ADMIN_KEY_ENV

PIPELINE_NAME = "embedforge"

#: task name -> (component, its main output artifact). The CLI reads results back through this table. (The
#: ``report`` task is not a stage: it only renders these artifacts.)
STAGES: dict[str, str] = {
    "ingest": "chunks",
    "sdg": "pairs",
    "validate": "validation",
    "mine": "mined",
    "train": "model",
    "evaluate": "evaluation",
    "export": "onnx_model",
    "register": "registry",
    "gate": "decision",
    "promote": "triton_repo",
}


@dataclass(frozen=True)
class KubernetesSettings:
    """Cluster-side settings applied when compiling for Kubernetes (see manifests/)."""

    data_pvc: str = "embedforge-data"
    data_mount: str = "/data"
    llm_secret: str = "embedforge-llm"
    llm_secret_key: str = "api-key"
    llm_key_env: str = "NVIDIA_API_KEY"
    mlflow_secret: str = "embedforge-mlflow"
    gpu_resource: str = "nvidia.com/gpu"
    train_gpus: int = 1
    # A failed train step (a preempted GPU node, a lost pod) is run again this many times; it continues from the
    # probes and checkpoint it left in train.work_dir on the data volume (embedforge.stages.train.work).
    train_retries: int = 2
    # The Triton model repository (manifests/base/data-pvc.yaml) and the server reading it (manifests/base/triton.yaml):
    # promote publishes the version there, has Triton load it and checks it before it moves the alias.
    model_repo_pvc: str = "embedforge-model-repository"
    model_repo_mount: str = "/models"
    # The headless Service (manifests/base/triton.yaml): its name resolves to every Triton pod, so promote and
    # rollback load and probe the version on each replica (triton.discover_replicas). A short name: the overlays
    # deploy Triton into the namespace the pipeline's pods run in, whichever that is.
    triton_url: str = "http://triton-replicas:8000"
    # The key that unlocks Triton's repository API (manifests/base/triton.yaml), for promote.
    triton_admin_secret: str = "embedforge-triton-admin"
    # Every step's container image (embedforge compile --image REGISTRY/embedforge@sha256:...).
    image: str = BASE_IMAGE
    # Where GPU steps (mine, train, evaluate) may run: node labels they must match (`--gpu-node-selector KEY=VALUE`)
    # and taints they tolerate (`--gpu-toleration KEY[=VALUE]:EFFECT`; default: the NVIDIA device plugin's taint).
    gpu_node_selector: tuple[tuple[str, str], ...] = ()
    gpu_tolerations: tuple[str, ...] = ("nvidia.com/gpu:NoSchedule",)
    # The ConfigMap (manifests/base/pipeline-config.yaml) whose MLFLOW_TRACKING_URI every MLflow step reads when the
    # run's tracking_uri parameter is empty.
    config_map: str = "embedforge-config"
    # uid/gid every step runs as (the image's user; manifests give the data volumes to it).
    run_as: int = 1000


#: Step -> the longest it may run, in seconds (then Kubernetes ends the pod and the run fails with a timeout).
STEP_TIMEOUTS = {"ingest": 2 * 3600, "sdg": 24 * 3600, "validate": 1800, "mine": 6 * 3600, "train": 48 * 3600,
                 "evaluate": 6 * 3600, "export": 2 * 3600, "register": 3600, "gate": 3 * 3600, "promote": 3600,
                 "report": 1800}
#: Steps that are pure functions of their inputs, so running one again after a lost pod is safe. register (it
#: creates a version; recovery cleans up after it) and promote (it moves the alias) are not retried; train has its
#: own retry with its work folder.
IDEMPOTENT = ("ingest", "sdg", "validate", "mine", "evaluate", "export", "gate", "report")
#: Scratch space (/tmp, an emptyDir) per step: what the step may write outside its outputs.
SCRATCH = {"ingest": "10Gi", "sdg": "10Gi", "validate": "2Gi", "mine": "20Gi", "train": "50Gi", "evaluate": "20Gi",
           "export": "20Gi", "register": "20Gi", "gate": "20Gi", "promote": "10Gi", "report": "2Gi"}


def parse_toleration(spec: str) -> dict[str, str]:
    """``KEY[=VALUE]:EFFECT`` -> the keyword arguments of ``kfp.kubernetes.add_toleration``."""
    what, sep, effect = spec.rpartition(":")
    if not sep or not what or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"toleration {spec!r}: expected KEY[=VALUE]:EFFECT, EFFECT one of NoSchedule, "
                         "PreferNoSchedule, NoExecute (e.g. nvidia.com/gpu:NoSchedule)")
    key, eq, value = what.partition("=")
    return {"key": key, "operator": "Equal", "value": value, "effect": effect} if eq else {
        "key": key, "operator": "Exists", "effect": effect}


def _stage_args(cfg: PipelineConfig) -> dict[str, dict]:
    d = cfg.to_dict()
    return {
        "ingest_config": d["ingest"],
        "sdg_config": d["sdg"],
        "validate_config": d["validate"],
        "mine_config": d["mine"],
        "train_config": d["train"],
        "evaluate_config": d["evaluate"],
        "export_config": d["export"],
        "register_config": d["register"],
        "gate_config": d["gate"],
        "triton_config": d["triton"],
        "prompts": d["prompts"],
        "model_config": d["model"],
    }


def pipeline_arguments(cfg: PipelineConfig, corpus_path: str, pairs_file: str = "", eval_beir: str = "",
                       tracking_uri: str = "") -> dict:
    """The arguments ``embedforge run`` passes to the pipeline for a validated ``PipelineConfig``."""
    return {
        "corpus_path": corpus_path,
        "pairs_file": pairs_file,
        "eval_beir": eval_beir,
        "base_model": cfg.base_model,
        "tracking_uri": tracking_uri,
        **_stage_args(cfg),
    }


def _signature(inputs: str, defaults: dict[str, dict]) -> inspect.Signature:
    """The pipeline's parameters: the four inputs (URIs or paths, see ``pipelines/inputs.py``), then the rest."""
    def param(name: str, annotation: type, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)

    # corpus, pairs, external BEIR set (+ base_model_uri); then the base model id (a path on the pvc route)
    names = URI_PARAMETERS if inputs == ARTIFACTS else tuple(n for n in PATH_PARAMETERS if n != "base_model")
    base_model = BASE_MODEL_ID if inputs == ARTIFACTS else "base_model"
    return inspect.Signature([
        param(names[0], str), *(param(n, str, "") for n in names[1:]),
        param(base_model, str, PipelineConfig().base_model), param("tracking_uri", str, ""),
        *(param(name, dict, value) for name, value in defaults.items()),
    ])


def build_pipeline(kubernetes: bool = False, k8s: KubernetesSettings = KubernetesSettings(),
                   inputs: str = ARTIFACTS):
    """Return the ``@dsl.pipeline`` function; ``kubernetes=True`` adds cluster resources and secrets.

    ``inputs`` (Kubernetes only; the local variant always takes paths) picks how corpus, pairs, external BEIR
    set and base model enter: imported artifacts from URIs, or paths on the data volume (``pipelines/inputs.py``).
    """
    if inputs not in INPUT_ROUTES:
        raise ValueError(f"inputs must be one of {INPUT_ROUTES}, got {inputs!r}")
    inputs = inputs if kubernetes else PVC
    cfg = PipelineConfig()
    if kubernetes and k8s.train_gpus >= 1:  # the train step has a GPU: the gpu profile's defaults (GPU_PROFILE)
        cfg, _ = cfg.resolved(cuda_available=True)
    if kubernetes:  # promote publishes into the Triton PVC and rolls the version out on the cluster's server
        cfg = cfg.model_copy(update={"triton": cfg.triton.model_copy(
            update={"repository_dir": k8s.model_repo_mount, "server_url": k8s.triton_url,
                    "discover_replicas": True})})
        # the train step's work folder (probes, checkpoints) on the data volume: it outlives the pod
        train_update: dict[str, Any] = {"work_dir": f"{k8s.data_mount}/train_work"}
        if k8s.train_gpus > 1:  # one torchrun worker per GPU of the train step (the auto schedule's probes too)
            train_update["processes"] = 0
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train_update)})
    defaults = _stage_args(cfg)

    signature = _signature(inputs, defaults)

    def embedforge_pipeline(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)  # KFP calls it with one channel per parameter, positionally
        bound.apply_defaults()
        p = bound.arguments
        if inputs == ARTIFACTS:
            p["base_model"] = p[BASE_MODEL_ID]
            given = import_inputs(p["corpus_uri"], p["pairs_uri"], p["eval_beir_uri"], p["base_model_uri"],
                                  p["base_model"])
        else:
            given = Inputs(p["corpus_path"], p["pairs_file"], p["eval_beir"], p["base_model"])
        tasks = _steps(given, p)
        if kubernetes:
            _apply_kubernetes(k8s, inputs, given.stand_ins, **tasks)

    embedforge_pipeline.__signature__ = signature
    return dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])(embedforge_pipeline)


def _artifacts(**artifacts) -> dict:
    """The optional artifact inputs that are connected (``None``: left unconnected, the path route)."""
    return {name: a for name, a in artifacts.items() if a is not None}


def _steps(given: Inputs, p: dict) -> dict:
    """Wire the eleven steps; return their tasks by name (``promote`` runs under the gate's ``dsl.If``)."""
    base_model, tracking_uri, prompts = p["base_model"], p["tracking_uri"], p["prompts"]
    loaded_as = {"model_config": p["model_config"]}  # how every step that loads the base model loads it
    base = _artifacts(base_model_artifact=given.base_model_files)
    external = _artifacts(eval_beir_artifact=given.eval_beir_data)
    ingest_task = ingest(corpus_path=given.corpus_path, base_model=base_model, config=p["ingest_config"],
                         tracking_uri=tracking_uri, **_artifacts(corpus_artifact=given.corpus), **base)
    chunks = ingest_task.outputs["chunks"]
    sdg_task = sdg(chunks=chunks, pairs_file=given.pairs_file, base_model=base_model, config=p["sdg_config"],
                   **_artifacts(pairs_artifact=given.pairs), **base, **loaded_as)
    pairs = sdg_task.outputs["pairs"]
    validate_task = validate(chunks=chunks, pairs=pairs, config=p["validate_config"])
    mine_task = mine(chunks=chunks, pairs=pairs, base_model=base_model, config=p["mine_config"],
                     **base, **loaded_as).after(validate_task)
    train_task = train(mined=mine_task.outputs["mined"], base_model=base_model, config=p["train_config"],
                       prompts=prompts, tracking_uri=tracking_uri, register_config=p["register_config"],
                       kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **base, **loaded_as)
    model = train_task.outputs["model"]
    evaluate_task = evaluate(
        chunks=chunks, pairs=pairs, mined=mine_task.outputs["mined"], model=model,
        base_model=base_model, eval_beir=given.eval_beir, config=p["evaluate_config"], **external, **base,
        **loaded_as,
    )
    export_task = export(model=model, chunks=chunks, config=p["export_config"])
    register_task = register(
        model=model, onnx_model=export_task.outputs["onnx_model"], evaluation=evaluate_task.outputs["evaluation"],
        validation=validate_task.outputs["validation"], pairs=pairs, config=p["register_config"],
        # MLflow params come from the configs the stages above actually received (no separate copy)
        base_model=base_model, prompts=prompts, ingest_config=p["ingest_config"], sdg_config=p["sdg_config"],
        validate_config=p["validate_config"], mine_config=p["mine_config"], train_config=p["train_config"],
        evaluate_config=p["evaluate_config"], export_config=p["export_config"], gate_config=p["gate_config"],
        triton_config=p["triton_config"], tracking_uri=tracking_uri, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **loaded_as,
        **({"base_model_uri": p["base_model_uri"]} if "base_model_uri" in p else {}),
    )
    gate_task = gate(
        evaluation=evaluate_task.outputs["evaluation"], registry=register_task.outputs["registry"],
        chunks=chunks, pairs=pairs, config=p["gate_config"], evaluate_config=p["evaluate_config"],
        tracking_uri=tracking_uri, **external,  # the champion is re-evaluated on the same external set
    )
    with dsl.If(gate_task.outputs["Output"] == True, name="promote-if-better"):  # noqa: E712 (KFP condition syntax)
        promote_task = promote(
            decision=gate_task.outputs["decision"], registry=register_task.outputs["registry"],
            onnx_model=export_task.outputs["onnx_model"], triton_config=p["triton_config"],
            tracking_uri=tracking_uri,
        )
    report_task = report(
        chunks=chunks, validation=validate_task.outputs["validation"], model=model,
        evaluation=evaluate_task.outputs["evaluation"], registry=register_task.outputs["registry"],
        decision=gate_task.outputs["decision"], tracking_uri=tracking_uri,
    )
    return {"ingest_task": ingest_task, "sdg_task": sdg_task, "validate_task": validate_task, "mine_task": mine_task,
            "train_task": train_task, "evaluate_task": evaluate_task, "export_task": export_task,
            "register_task": register_task, "gate_task": gate_task, "promote_task": promote_task,
            "report_task": report_task}


def _apply_kubernetes(k8s: KubernetesSettings, inputs: str, stand_ins: tuple, ingest_task, sdg_task, validate_task,
                      mine_task, train_task, evaluate_task, export_task, register_task, gate_task, promote_task,
                      report_task) -> None:
    from kfp import kubernetes

    for task in (ingest_task, sdg_task, validate_task, mine_task, train_task, evaluate_task, export_task,
                 register_task, gate_task, promote_task, report_task, *stand_ins):
        task.set_container_image(k8s.image)
        # The prod overlay's NetworkPolicies admit these pods to MLflow, and only promote to Triton's repository API.
        kubernetes.add_pod_label(task, "embedforge.io/pipeline", "true")
    kubernetes.add_pod_label(promote_task, "embedforge.io/promote", "true")
    if inputs == PVC:
        # Inputs as paths on the shared data volume (see manifests/): every step that reads one mounts it — the
        # base model folder (ingest's tokenizer, sdg's de-duplication, mine, train, evaluate) and the external BEIR
        # folder (evaluate, and gate, which re-evaluates the champion on the folder evaluate recorded). A path
        # says nothing about the bytes behind it, so the steps that read data from it do not use the cache.
        for task in (ingest_task, sdg_task, mine_task, train_task, evaluate_task, gate_task):
            kubernetes.mount_pvc(task, pvc_name=k8s.data_pvc, mount_path=k8s.data_mount)
        for task in (ingest_task, sdg_task, evaluate_task):
            task.set_caching_options(False)
    kubernetes.mount_pvc(promote_task, pvc_name=k8s.model_repo_pvc, mount_path=k8s.model_repo_mount)
    # The LLM key (sdg.generator=llm) comes from a Secret, as an env var: never a pipeline parameter.
    kubernetes.use_secret_as_env(sdg_task, secret_name=k8s.llm_secret,
                                 secret_key_to_env={k8s.llm_secret_key: k8s.llm_key_env}, optional=True)
    # Triton's admin key: promote loads and unloads models through the restricted repository API.
    kubernetes.use_secret_as_env(promote_task, secret_name=k8s.triton_admin_secret,
                                 secret_key_to_env={"admin-key": ADMIN_KEY_ENV}, optional=True)
    # MLflow credentials (if the tracking server needs them) likewise.
    for task in (train_task, register_task, gate_task, promote_task, report_task):  # (train: its live run)
        kubernetes.use_secret_as_env(
            task, secret_name=k8s.mlflow_secret,
            secret_key_to_env={"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
            optional=True,
        )
    for task in (mine_task, evaluate_task, gate_task, export_task):
        task.set_cpu_request("4").set_memory_request("16Gi").set_memory_limit("32Gi")
    train_task.set_cpu_request("8").set_memory_request("32Gi").set_memory_limit("64Gi")
    train_task.set_accelerator_type(k8s.gpu_resource).set_accelerator_limit(k8s.train_gpus)
    # train.processes=0 starts one torchrun worker per visible GPU; NCCL needs more than the default 64 MiB /dev/shm
    kubernetes.empty_dir_mount(train_task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    # train.nodes > 1: the step stages its inputs for a TrainJob on the shared volume and reads the model back
    # there (embedforge.cluster.trainjob; TrainConfig.trainjob.shared_pvc/shared_mount default to these), and the nodes
    # run the step's own image
    if inputs == ARTIFACTS:  # (the pvc route mounted it above) and the LLM generator's resumable
        # work dir (sdg_config.llm.work_dir=/data/sdg_work/...) lives there too
        for task in (train_task, sdg_task):
            kubernetes.mount_pvc(task, pvc_name=k8s.data_pvc, mount_path=k8s.data_mount)
    train_task.set_env_variable("EMBEDFORGE_IMAGE", k8s.image)
    train_task.set_retry(num_retries=k8s.train_retries, backoff_duration="60s", backoff_factor=2.0)
    for task in (mine_task, evaluate_task):  # embedding + faiss-gpu when the image has it
        task.set_accelerator_type(k8s.gpu_resource).set_accelerator_limit(1)
    for task in (ingest_task, sdg_task, validate_task, register_task, promote_task, report_task):
        task.set_cpu_request("1").set_memory_request("4Gi")
    for task in stand_ins:  # they only write a marker file
        task.set_cpu_request("100m").set_memory_request("256Mi")
    for task in (register_task, gate_task, promote_task, report_task):
        task.set_caching_options(False)  # they read/write the live registry
    named = {"ingest": ingest_task, "sdg": sdg_task, "validate": validate_task, "mine": mine_task, "train": train_task,
             "evaluate": evaluate_task, "export": export_task, "register": register_task, "gate": gate_task,
             "promote": promote_task, "report": report_task}
    for name, task in named.items():
        kubernetes.set_timeout(task, STEP_TIMEOUTS[name])
        kubernetes.set_security_context(task, run_as_user=k8s.run_as, run_as_group=k8s.run_as, run_as_non_root=True)
        # the image's root filesystem may be read-only: /tmp and the caches under $HOME are emptyDirs of bounded size
        kubernetes.empty_dir_mount(task, volume_name="tmp", mount_path="/tmp", size_limit=SCRATCH[name])
        kubernetes.empty_dir_mount(task, volume_name="cache", mount_path="/home/embedforge/.cache", size_limit="5Gi")
        if name in IDEMPOTENT:
            task.set_retry(num_retries=1, backoff_duration="30s")
    for task in stand_ins:
        kubernetes.set_timeout(task, 600)
        kubernetes.set_security_context(task, run_as_user=k8s.run_as, run_as_group=k8s.run_as, run_as_non_root=True)
    for task in (ingest_task, train_task, register_task, gate_task, promote_task, report_task):
        # an empty tracking_uri parameter: the cluster's MLflow from the ConfigMap (ingest checks it is set)
        kubernetes.use_config_map_as_env(task, config_map_name=k8s.config_map,
                                         config_map_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
                                         optional=True)
    for task in (mine_task, train_task, evaluate_task):  # GPU steps: only on GPU nodes, through their taints
        for key, value in k8s.gpu_node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for spec in k8s.gpu_tolerations:
            kubernetes.add_toleration(task, **parse_toleration(spec))
    for task in (validate_task, register_task, promote_task, report_task):  # small steps: bounded memory
        task.set_memory_limit("8Gi")


def compile_pipeline(path: str, kubernetes: bool = True, k8s: KubernetesSettings = KubernetesSettings(),
                     inputs: str = ARTIFACTS) -> str:
    """Write the pipeline YAML (the Kubernetes variant, inputs as artifacts, by default) and return its path.

    The same code and settings always give the same bytes: KFP's header comment lists dict defaults in the order
    of a protobuf Struct, which changes between processes, so the header's dicts are rewritten with sorted keys.
    """
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(kubernetes=kubernetes, k8s=k8s, inputs=inputs), package_path=path)
    text = Path(path).read_text(encoding="utf-8")
    Path(path).write_text(_sorted_header(text), encoding="utf-8")
    return path


_DICT_DEFAULT = re.compile(r"^(#\s+\w+: dict \[Default: )(\{.*\})(\])$")


def _sorted_header(text: str) -> str:
    """``text`` with every ``# name: dict [Default: {...}]`` header line's dict printed with sorted keys."""
    def sort(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: sort(value[k]) for k in sorted(value)}
        return [sort(v) for v in value] if isinstance(value, list) else value

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break  # the header comment ends at the first YAML line
        if m := _DICT_DEFAULT.match(line):
            lines[i] = f"{m.group(1)}{sort(ast.literal_eval(m.group(2)))}{m.group(3)}"
    return "\n".join(lines)

"""Run a compiled KFP pipeline (``embedforge compile`` YAML) step by step in containers, as a KFP backend would.

What a KFP v2 backend does for each task, done here with ``docker run``:

* walk the DAG in dependency order, into ``dsl.If`` sub-DAGs when their trigger condition holds;
* build the task's ``ExecutorInput`` (parameter values; input artifacts with their URIs; output artifact URIs and
  the executor-output file) and run the executor's exact ``command`` + ``args`` in the executor's ``image``;
* apply the task's Kubernetes platform config: ``pvcMount`` (a host folder per claim), ``emptyDirMounts``
  (tmpfs with the size limit), ``secretAsEnv`` / ``configMapAsEnv`` (from the Secrets and ConfigMaps given here;
  values reach the container by name, never on a command line), ``securityContext`` (``--user``), memory limit,
  ``activeDeadlineSeconds``;
* and what a restricted pod gets: a read-only root filesystem, every capability dropped, no privilege escalation,
  and no network unless the step is one that needs it.

Artifacts live under ``<work>/s3/<bucket>/<task>/<output>`` on this machine and appear in the container at
``/s3/<bucket>/...``, the local path KFP's executor uses for ``s3://`` URIs: a task's input artifacts are mounted
read-only, its own ``<task>/`` folder read-write, nothing else of the store — so a step that reads an input it was
not given, or writes outside its outputs, fails here as it would in a cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUCKET = "embedforge-artifacts"
_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")


@dataclass
class TaskRun:
    """One executed task: its container's exit code, seconds, output log, output parameters and artifact folders."""

    name: str
    returncode: int
    seconds: float
    log: str
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)


class StepFailed(RuntimeError):
    """A task's container exited non-zero (the run stops, as KFP's does)."""

    def __init__(self, run: TaskRun):
        super().__init__(f"step {run.name} failed with exit code {run.returncode}:\n{run.log[-4000:]}")
        self.run = run


class CompiledPipeline:
    """Executes one compiled package.

    Args:
        package: The compiled pipeline YAML (the Kubernetes variant: its second document is the platform spec).
        work: Host folder for the artifact store, executor files and logs.
        pvcs: Claim name -> host folder mounted where the task's ``pvcMount`` says.
        secrets: Secret name -> {key: value}, for ``secretAsEnv``.
        config_maps: ConfigMap name -> {key: value}, for ``configMapAsEnv``.
        networked: Tasks that reach services (MLflow, Triton): host network. Every other task: ``--network none``.
        docker: The docker command.
    """

    def __init__(self, package: Path, work: Path, pvcs: dict[str, Path] | None = None,
                 secrets: dict[str, dict[str, str]] | None = None, config_maps: dict[str, dict[str, str]] | None = None,
                 networked: tuple[str, ...] = (), docker: str = "docker"):
        docs = list(yaml.safe_load_all(Path(package).read_text()))
        self.spec = docs[0]
        self.platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
        self.work = Path(work)
        self.pvcs = {k: Path(v) for k, v in (pvcs or {}).items()}
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}
        self.networked = networked
        self.docker = docker
        self.runs: dict[str, TaskRun] = {}

    # ------------------------------------------------------------------------------------------------ DAG
    def run(self, arguments: dict[str, Any]) -> dict[str, TaskRun]:
        """Run the pipeline with ``arguments`` (unset ones take their compiled defaults); the tasks that ran."""
        root = self.spec["root"]
        params = {n: d.get("defaultValue") for n, d in root["inputDefinitions"]["parameters"].items()}
        unknown = set(arguments) - set(params)
        if unknown:
            raise ValueError(f"not parameters of the pipeline: {sorted(unknown)}")
        params.update(arguments)
        self._run_dag(root["dag"], params, {})
        return self.runs

    def _run_dag(self, dag: dict, params: dict[str, Any], artifacts: dict[str, Path]) -> None:
        tasks = dag["tasks"]
        done: set[str] = set()
        # a sub-DAG's tasks may name tasks of the enclosing DAG: those have run already
        needs = {n: set(t.get("dependentTasks", [])) & tasks.keys() for n, t in tasks.items()}
        while len(done) < len(tasks):
            ready = [n for n in sorted(tasks) if n not in done and needs[n] <= done]
            if not ready:
                raise RuntimeError(f"DAG cycle or unknown dependency among {sorted(set(tasks) - done)}")
            for name in ready:
                self._run_task(name, tasks[name], params, artifacts)
                done.add(name)

    def _inputs(self, task: dict, params: dict[str, Any], artifacts: dict[str, Path]) -> tuple[dict, dict]:
        p_in, a_in = {}, {}
        for key, src in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in src:
                p_in[key] = params[src["componentInputParameter"]]
            elif "taskOutputParameter" in src:
                o = src["taskOutputParameter"]
                p_in[key] = self.runs[o["producerTask"]].parameters[o["outputParameterKey"]]
            elif "runtimeValue" in src:
                p_in[key] = src["runtimeValue"]["constant"]
            else:
                raise ValueError(f"unsupported parameter source {src}")
        for key, src in task.get("inputs", {}).get("artifacts", {}).items():
            if "taskOutputArtifact" in src:
                o = src["taskOutputArtifact"]
                a_in[key] = self.runs[o["producerTask"]].artifacts[o["outputArtifactKey"]]
            elif "componentInputArtifact" in src:
                a_in[key] = artifacts[src["componentInputArtifact"]]
            else:
                raise ValueError(f"unsupported artifact source {src}")
        return p_in, a_in

    def _run_task(self, name: str, task: dict, params: dict[str, Any], artifacts: dict[str, Path]) -> None:
        component = self.spec["components"][task["componentRef"]["name"]]
        p_in, a_in = self._inputs(task, params, artifacts)
        if "dag" in component:  # a dsl.If group: its sub-DAG runs when the condition holds
            condition = task.get("triggerPolicy", {}).get("condition", "")
            if condition and not _holds(condition, p_in):
                return
            self._run_dag(component["dag"], p_in, a_in)
            return
        self.runs[name] = self._execute(name, component, p_in, a_in)

    # ----------------------------------------------------------------------------------------- one task
    def _execute(self, name: str, component: dict, p_in: dict, a_in: dict) -> TaskRun:
        label = component["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][label]["container"]
        platform = self.platform.get(label, {})
        store = self.work / "s3" / BUCKET
        exec_dir = self.work / "executor" / name
        exec_dir.mkdir(parents=True, exist_ok=True)
        os.chown(exec_dir, 1000, 1000)
        mounts: list[str] = [f"{exec_dir}:/kfp/executor"]
        input_artifacts = {}
        for key, host in a_in.items():
            in_container = f"/s3/{BUCKET}/{host.relative_to(store)}"
            mounts.append(f"{host}:{in_container}:ro")
            kind = component["inputDefinitions"]["artifacts"][key]["artifactType"]
            input_artifacts[key] = {"artifacts": [{"name": key, "type": kind, "uri": f"s3://{BUCKET}/{host.relative_to(store)}",
                                                   "metadata": {}}]}
        outputs, out_paths = {}, {}
        own = store / name  # this task's outputs, and nothing else of the store, are writable
        own.mkdir(parents=True, exist_ok=True)
        os.chown(own, 1000, 1000)
        mounts.append(f"{own}:/s3/{BUCKET}/{name}")
        for key, d in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            outputs[key] = {"artifacts": [{"name": key, "type": d["artifactType"], "uri": f"s3://{BUCKET}/{name}/{key}"}]}
            out_paths[key] = own / key
        out_params = {k: {"outputFile": f"/kfp/executor/{k}"}
                      for k in component.get("outputDefinitions", {}).get("parameters", {})}
        executor_input = {
            "inputs": {"parameterValues": p_in, "artifacts": input_artifacts},
            "outputs": {"artifacts": outputs, "parameters": out_params, "outputFile": "/kfp/executor/output_metadata.json"},
        }
        argv = [a.replace("{{$}}", json.dumps(executor_input)) for a in container.get("args", [])]
        docker_args, env = self._platform_args(name, platform, container)
        cmd = [self.docker, "run", "--rm", "--name", f"kfp-{name}-{os.getpid()}", "--read-only", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", *docker_args,
               *[a for m in mounts for a in ("-v", m)], "--entrypoint", container["command"][0],
               container["image"], *container["command"][1:], *argv]
        t0 = time.monotonic()
        deadline = int(platform.get("activeDeadlineSeconds", 0)) or None
        try:
            proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=deadline)
            rc, log = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            subprocess.run([self.docker, "rm", "-f", f"kfp-{name}-{os.getpid()}"], capture_output=True)
            rc, log = 124, f"activeDeadlineSeconds {deadline} exceeded\n{exc.stdout or ''}"
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        (self.work / "logs" / f"{name}.log").write_text(log)
        run = TaskRun(name, rc, time.monotonic() - t0, log, artifacts=out_paths)
        meta = exec_dir / "output_metadata.json"
        if rc == 0 and meta.is_file():
            run.parameters = json.loads(meta.read_text()).get("parameterValues", {})
        for key in out_params:
            if key not in run.parameters and (exec_dir / key).is_file():
                run.parameters[key] = json.loads((exec_dir / key).read_text())
        if rc != 0:
            self.runs[name] = run
            raise StepFailed(run)
        return run

    def _platform_args(self, name: str, platform: dict, container: dict) -> tuple[list[str], dict[str, str]]:
        args: list[str] = []
        env: dict[str, str] = {}
        ctx = platform.get("securityContext", {})
        user = f"{ctx.get('runAsUser', 1000)}:{ctx.get('runAsGroup', ctx.get('runAsUser', 1000))}"
        args += ["--user", user]
        args += ["--network", "host" if name in self.networked else "none"]
        uid, gid = user.split(":")
        for m in platform.get("emptyDirMounts", []):  # an emptyDir is writable by the pod's user, like this tmpfs
            size = f",size={_bytes(m['sizeLimit'])}" if m.get("sizeLimit") else ""
            args += ["--tmpfs", f"{m['mountPath']}:rw,mode=1777,uid={uid},gid={gid}{size}"]
        for m in platform.get("pvcMount", []):
            claim = m.get("constant") or m.get("pvcNameParameter", {}).get("runtimeValue", {}).get("constant")
            if claim not in self.pvcs:
                raise KeyError(f"step {name} mounts the claim {claim!r}: give it a host folder (pvcs=)")
            args += ["-v", f"{self.pvcs[claim]}:{m['mountPath']}"]
        for item in container.get("env", []):
            env[item["name"]] = item["value"]
            args += ["-e", item["name"]]
        for source, table in (("secretAsEnv", self.secrets), ("configMapAsEnv", self.config_maps)):
            for ref in platform.get(source, []):
                data = table.get(ref.get("secretName") or ref.get("configMapName"))
                if data is None and not ref.get("optional"):
                    raise KeyError(f"step {name} needs {source} {ref}")
                for k in ref.get("keyToEnv", []):
                    key = k.get("secretKey") or k.get("configMapKey")
                    if data and key in data:
                        env[k["envVar"]] = data[key]
                        args += ["-e", k["envVar"]]
        limit = container.get("resources", {}).get("memoryLimit")
        if limit:
            args += ["--memory", str(int(float(limit) * 1e9))]
        return args, env


def _bytes(quantity: str) -> int:
    m = _SIZE.match(quantity)
    if not m:
        raise ValueError(f"unsupported quantity {quantity!r}")
    return int(m.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]


def _holds(condition: str, params: dict[str, Any]) -> bool:
    """Evaluate KFP's ``inputs.parameter_values['x'] == true`` trigger conditions (the form dsl.If compiles to)."""
    m = re.fullmatch(r"inputs\.parameter_values\['([^']+)'\] == (true|false|'[^']*'|-?\d+(?:\.\d+)?)", condition.strip())
    if not m:
        raise ValueError(f"unsupported trigger condition {condition!r}")
    want = json.loads(m.group(2).replace("'", '"'))
    return params.get(m.group(1)) == want

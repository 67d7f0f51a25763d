"""Every input a step of the compiled Kubernetes pipeline reads is there in that step's pod.

The test walks the compiled YAML (pipeline spec + Kubernetes platform spec), the way the KFP backend does:

* **pvc variant** (``embedforge compile --inputs pvc``): a step reads a path when one of its parameters is fed
  (through any nesting of sub-DAGs) by a pipeline parameter that holds a path on the data volume (``corpus_path``,
  ``pairs_file``, ``eval_beir``, ``base_model``), or when it re-reads a path that another step recorded (the gate
  re-evaluates the champion on the external BEIR folder evaluate recorded). Such a step must mount the data PVC
  at the data mount path.
* **artifacts variant** (the committed ``pipelines/embedforge.yaml``): no step takes a path parameter at all, and
  every step that needs the corpus, the pairs file, the external BEIR set or the base model has it as an input
  artifact that a ``dsl.importer`` of the matching ``*_uri`` parameter produces (through ``dsl.If``/``dsl.OneOf``
  for the optional ones).
"""

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "pipelines" / "embedforge.yaml"
DATA_PVC, DATA_MOUNT = "embedforge-data", "/data"

#: Pipeline parameters whose value is a path on the data volume (the pvc route's inputs).
PATH_PARAMETERS = {"corpus_path", "pairs_file", "eval_beir", "base_model"}
#: Steps that read a path another step recorded in an artifact: the gate re-evaluates the champion on the
#: external BEIR folder evaluate wrote into evaluation.json. -> the parameter the path came from.
RECORDED_PATH_READERS = {"gate": "eval_beir"}
#: (step, parameter) pairs that only record the value as text (register: the base model tag/param in MLflow).
RECORDED_ONLY = {("register", "base_model")}
#: What each step needs -> the URI parameter its importer must read, on the artifacts route.
NEEDS = {
    "ingest": {"corpus_uri", "base_model_uri"},
    "sdg": {"pairs_uri", "base_model_uri"},
    "mine": {"base_model_uri"},
    "train": {"base_model_uri"},
    "evaluate": {"eval_beir_uri", "base_model_uri"},
    "gate": {"eval_beir_uri"},
}


# ------------------------------------------------------------------------------------------------ the walker
class Pipeline:
    """A compiled pipeline package, with the step-level facts the tests need resolved to the root parameters."""

    def __init__(self, text: str):
        docs = list(yaml.safe_load_all(text))
        self.spec = docs[0]
        platform = docs[1] if len(docs) > 1 else {}
        self.platform = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get(
            "executors", {})
        self.components = self.spec["components"]
        self.executors = self.spec["deploymentSpec"]["executors"]
        self.root_parameters = set(self.spec["root"].get("inputDefinitions", {}).get("parameters", {}))
        # step task name -> {input parameter: root parameters feeding it}, {input artifact: sources}
        self.steps: dict[str, dict] = {}
        self._walk(self.spec["root"]["dag"], {p: {p} for p in self.root_parameters}, {})

    def executor_of(self, component: str) -> tuple[str, dict]:
        label = self.components[component]["executorLabel"]
        return label, self.executors[label]

    def _walk(self, dag: dict, params: dict[str, set], artifacts: dict[str, set]) -> None:
        """Record each container step of ``dag``; ``params``/``artifacts``: the DAG's inputs -> their sources."""
        for name, task in dag["tasks"].items():
            comp = task["componentRef"]["name"]
            inputs = task.get("inputs", {})
            p_in = {k: self._param_sources(v, params) for k, v in inputs.get("parameters", {}).items()}
            a_in = {k: self._artifact_sources(v, dag, params, artifacts) for k, v in inputs.get("artifacts", {}).items()}
            if "dag" in self.components[comp]:
                self._walk(self.components[comp]["dag"], p_in, a_in)
            elif "container" in self.executor_of(comp)[1]:
                self.steps[name] = {"component": comp, "parameters": p_in, "artifacts": a_in}

    @staticmethod
    def _param_sources(spec: dict, params: dict[str, set]) -> set:
        """The root parameters feeding a task's input parameter (none for constants and task outputs)."""
        return set(params.get(spec["componentInputParameter"], ())) if "componentInputParameter" in spec else set()

    def _artifact_sources(self, spec: dict, dag: dict, params: dict[str, set], artifacts: dict[str, set]) -> set:
        """("importer", uri parameter) / ("step", task name) for each artifact that can feed this input."""
        if "componentInputArtifact" in spec:
            return set(artifacts.get(spec["componentInputArtifact"], ()))
        out = spec["taskOutputArtifact"]
        return self._produced(dag, params, out["producerTask"], out["outputArtifactKey"])

    def _produced(self, dag: dict, params: dict[str, set], task_name: str, key: str) -> set:
        task = dag["tasks"][task_name]
        comp_name = task["componentRef"]["name"]
        task_params = {k: self._param_sources(v, params) for k, v in task.get("inputs", {}).get("parameters", {}).items()}
        comp = self.components[comp_name]
        if "dag" in comp:  # a condition group: its output selects among its sub-tasks' outputs (dsl.OneOf)
            selectors = comp["dag"]["outputs"]["artifacts"][key]["artifactSelectors"]
            return set().union(*(self._produced(comp["dag"], task_params, s["producerSubtask"], s["outputArtifactKey"])
                                 for s in selectors))
        _, executor = self.executor_of(comp_name)
        if "importer" in executor:
            return {("importer", p) for p in task_params[executor["importer"]["artifactUri"]["runtimeParameter"]]}
        return {("step", task_name)}

    def mounts(self, step: str) -> set[tuple[str, str]]:
        label, _ = self.executor_of(self.steps[step]["component"])
        return {(m.get("constant") or m.get("componentInputParameter"), m["mountPath"])
                for m in self.platform.get(label, {}).get("pvcMount", [])}

    def path_readers(self) -> dict[str, set[str]]:
        """step -> the path parameters it reads (as a parameter, or recorded by an upstream step)."""
        readers: dict[str, set[str]] = {}
        for step, facts in self.steps.items():
            read = {p for p in set().union(*facts["parameters"].values()) & PATH_PARAMETERS
                    if (step, p) not in RECORDED_ONLY}
            if step in RECORDED_PATH_READERS and RECORDED_PATH_READERS[step] in self.root_parameters:
                read.add(RECORDED_PATH_READERS[step])
            if read:
                readers[step] = read
        return readers


def _compile(tmp_path: Path, *args: str) -> Pipeline:
    out = tmp_path / "p.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    image = () if "--local" in args else ("--image", "registry.example/team/embedforge@sha256:" + "0f" * 32)
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "compile", "--output", str(out), *image, *args],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return Pipeline(out.read_text())


def _unmounted(pipeline: Pipeline) -> list[str]:
    return [f"{step} reads {sorted(params)} but does not mount {DATA_PVC} at {DATA_MOUNT}"
            for step, params in sorted(pipeline.path_readers().items())
            if (DATA_PVC, DATA_MOUNT) not in pipeline.mounts(step)]


# ------------------------------------------------------------------------------------------------ the tests
def test_committed_pipeline_reads_no_path_its_pod_does_not_mount():
    assert _unmounted(Pipeline(COMMITTED.read_text())) == []


def test_pvc_variant_mounts_the_data_volume_in_every_step_that_reads_a_path(tmp_path):
    pipeline = _compile(tmp_path, "--inputs", "pvc")
    readers = pipeline.path_readers()
    # the walker sees what it must: the path inputs reach these steps (else the check below proves nothing)
    assert {"ingest", "sdg", "mine", "train", "evaluate", "gate"} <= set(readers)
    assert readers["evaluate"] >= {"eval_beir", "base_model"} and readers["ingest"] >= {"corpus_path"}
    assert _unmounted(pipeline) == []


def test_artifacts_variant_feeds_each_input_from_an_importer_of_its_uri():
    pipeline = Pipeline(COMMITTED.read_text())
    assert {"corpus_uri", "pairs_uri", "eval_beir_uri", "base_model_uri"} <= pipeline.root_parameters
    assert not pipeline.path_readers(), "the artifacts variant passes no path to any step"
    for step, needed in NEEDS.items():
        imported = {src[1] for sources in pipeline.steps[step]["artifacts"].values() for src in sources
                    if src[0] == "importer"}
        assert needed <= imported, f"{step} gets {sorted(imported)} from importers, needs {sorted(needed)}"
    # MLflow records where the base model came from, not the id the steps did not use
    assert pipeline.steps["register"]["parameters"]["base_model_uri"] == {"base_model_uri"}
    importers = [e["importer"] for e in pipeline.executors.values() if "importer" in e]
    assert {i["typeSchema"]["schemaTitle"] for i in importers} == {"system.Dataset", "system.Model"}
    assert all(not i.get("reimport", False) for i in importers)


def test_walker_flags_a_step_reading_a_path_without_the_volume(tmp_path):
    """The check bites: drop the data mount of the gate from a pvc compile and it names the gate."""
    pipeline = _compile(tmp_path, "--inputs", "pvc")
    gate_exec = pipeline.executor_of(pipeline.steps["gate"]["component"])[0]
    pipeline.platform[gate_exec]["pvcMount"] = [m for m in pipeline.platform[gate_exec]["pvcMount"]
                                                if m.get("constant") != DATA_PVC]
    assert _unmounted(pipeline) == [f"gate reads ['eval_beir'] but does not mount {DATA_PVC} at {DATA_MOUNT}"]


def test_compile_names_the_routes_on_a_bad_inputs_value(tmp_path):
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "compile", "--output", str(tmp_path / "p.yaml"),
                        "--inputs", "nfs", "--image", "registry.example/team/embedforge:1"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and "--inputs must be one of artifacts, pvc" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "p.yaml").exists()


# ------------------------------------------------------------------------------ the step side, run by kfp.local
def test_a_step_reads_the_imported_artifact_and_falls_back_when_it_is_the_absent_stand_in(tmp_path):
    """kfp.local runs a ``dsl.importer`` of a corpus folder and the absent stand-in of the base model into the
    real ingest component: it chunks the imported copy and takes its tokenizer from the ``base_model`` id.

    (kfp.local cannot run the compiled artifacts variant itself: it does not resolve ``dsl.OneOf`` over artifacts,
    kfp 2.17.3; the backend does.)
    """
    import json as json_

    from embedforge.components._stand_ins import no_model
    from embedforge.components.ingest.component import ingest
    from kfp import dsl, local

    from embedforge.config import PipelineConfig
    from embedforge.local.kfp_local import program_only_python_rewrite

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(" ".join(
            f"Document {i} sentence {j} talks about pump valve number {i * 10 + j} in some detail." for j in range(12)))

    @dsl.pipeline(name="imported-inputs")
    def imported(corpus_uri: str, base_model_id: str) -> dsl.Dataset:
        corpus_in = dsl.importer(artifact_uri=corpus_uri, artifact_class=dsl.Dataset, reimport=False)
        return ingest(corpus_path="", base_model=base_model_id, config=PipelineConfig().to_dict()["ingest"],
                      corpus_artifact=corpus_in.output, base_model_artifact=no_model().outputs["absent"],
                      tracking_uri="sqlite:///unused.db").outputs["chunks"]  # ingest only checks one is set

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with program_only_python_rewrite():
        chunks = imported(corpus_uri=str(corpus), base_model_id=PipelineConfig().base_model).output
    manifest = json_.loads((Path(chunks.path) / "manifest.json").read_text())
    assert manifest["inputs"]["corpus"] == str(corpus)  # kfp.local hands the importer's local path through
    assert manifest["counts"]["documents"] == 4 and manifest["counts"]["chunks"] > 4

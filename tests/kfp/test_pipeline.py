"""The pipeline as a whole: compiled YAML for Kubernetes, and `embedforge run` end to end through kfp.local.

The end-to-end test runs the real CLI in a subprocess (real model, real FAISS, real MLflow sqlite store, real
ONNX export and Triton config validation) on the tiny corpus, then runs it again into the same folder to exercise
the champion comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedforge.cluster.image import DEFAULT_IMAGE

FAST = [
    "train.epochs=1", "train.batch_size=16", "evaluate.k_values=[1,5,10]", "export.parity_samples=16",
    "validate.min_train_pairs=5", "validate.min_eval_pairs=2",
    "gate.rule=point",  # promotion mechanics on a tiny corpus, whose few eval queries give wide intervals
]


def _cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    if args[0] == "compile" and "--image" not in args and "--local" not in args and "--no-image" not in args:
        args = (*args, "--image", DEFAULT_IMAGE)  # what `make compile` writes the reference YAML with
    args = tuple(a for a in args if a != "--no-image")
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    e.pop("MLFLOW_TRACKING_URI", None)
    if "EMBEDFORGE_IMAGE" not in (env or {}):
        e.pop("EMBEDFORGE_IMAGE", None)
    return subprocess.run([sys.executable, "-m", "embedforge.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=1500)


# ------------------------------------------------------------------------------------------------ compile
def test_compiled_yaml_has_gate_gpu_and_secret_refs_only(tmp_path):
    out = tmp_path / "embedforge.yaml"
    r = _cli("compile", "--output", str(out))
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    spec, platform = docs[0], docs[1]
    tasks = spec["root"]["dag"]["tasks"]
    assert {"ingest", "sdg", "validate", "mine", "train", "evaluate", "export", "register", "gate"} <= set(tasks)
    cond = next(t for n, t in tasks.items() if n.startswith("condition"))
    assert "gate" in json.dumps(cond["triggerPolicy"]) and "true" in cond["triggerPolicy"]["condition"].lower()
    train_exec = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train_exec["resources"]["accelerator"]["count"] == "1"
    assert train_exec["resources"]["accelerator"]["type"] == "nvidia.com/gpu"
    train_default = spec["root"]["inputDefinitions"]["parameters"]["train_config"]["defaultValue"]
    assert train_default["work_dir"] == "/data/train_work"  # one route: the config; the journal outlives the pod
    assert "EMBEDFORGE_TRAIN_WORK_DIR" not in json.dumps(train_exec)
    retry = tasks["train"]["retryPolicy"]  # a preempted train pod is retried and continues from its work folder
    assert retry["maxRetryCount"] == 2 and retry["backoffDuration"] == "60s"
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    sdg_secret = execs["exec-sdg"]["secretAsEnv"][0]
    assert sdg_secret["secretName"] == "embedforge-llm"
    assert sdg_secret["keyToEnv"][0]["envVar"] == "NVIDIA_API_KEY"
    assert execs["exec-train"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"  # NCCL shared memory for torchrun
    promote_pvc = execs["exec-promote"]["pvcMount"][0]
    assert (promote_pvc["constant"], promote_pvc["mountPath"]) == ("embedforge-model-repository", "/models")
    triton_default = spec["root"]["inputDefinitions"]["parameters"]["triton_config"]["defaultValue"]
    assert triton_default["repository_dir"] == "/models" and triton_default["server_url"] == "http://triton-replicas:8000" and triton_default["discover_replicas"] is True
    text = out.read_text()
    assert "api_key\":" not in text.lower().replace(" ", "") and "REPLACE_ME" not in text


def test_committed_pipeline_yaml_is_up_to_date(tmp_path):
    """pipelines/embedforge.yaml is what `embedforge compile` writes now (regenerate it with `make compile`)."""
    committed = Path(__file__).resolve().parents[2] / "pipelines" / "embedforge.yaml"
    out = tmp_path / "fresh.yaml"
    r = _cli("compile", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == committed.read_bytes(), "pipelines/embedforge.yaml is stale: run `make compile` and commit it"


def test_compiling_twice_gives_the_same_bytes(tmp_path):
    """Two compiles in two processes (other hash seeds, so other dict orders inside KFP) write identical files:
    a diff of the committed YAML shows only real changes."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"p{seed}.yaml"
        r = _cli("compile", "--output", str(out), env={"PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert (b"gate_config: dict [Default: {'alias': 'champion', 'bootstrap_resamples': 2000.0, 'confidence': 0.95, "
            b"'eval_set': 'auto',") in outs[0]  # keys sorted


def test_compile_for_several_training_gpus_starts_one_worker_per_gpu(tmp_path):
    out = tmp_path / "p.yaml"
    r = _cli("compile", "--output", str(out), "--train-gpus", "2")
    assert r.returncode == 0, r.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    train_exec = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train_exec["resources"]["accelerator"]["count"] == "2"
    assert spec["root"]["inputDefinitions"]["parameters"]["train_config"]["defaultValue"]["processes"] == 0
    assert spec["root"]["inputDefinitions"]["parameters"]["sdg_config"]["defaultValue"]["augment"] == 1  # torchrun
    default = _cli("compile", "--output", str(tmp_path / "d.yaml"))
    params = next(yaml.safe_load_all((tmp_path / "d.yaml").read_text()))["root"]["inputDefinitions"]["parameters"]
    assert default.returncode == 0 and params["train_config"]["defaultValue"]["processes"] == 1
    assert params["sdg_config"]["defaultValue"]["augment"] == 1  # the auto schedule decides on them, data-parallel too


def test_compile_does_not_leak_a_key_from_the_environment(tmp_path):
    out = tmp_path / "p.yaml"
    r = _cli("compile", "--output", str(out), env={"NVIDIA_API_KEY": "nvapi-SECRET-123", "OPENAI_API_KEY": "sk-SECRET-456"})
    assert r.returncode == 0, r.stderr
    assert "SECRET" not in out.read_text()


# ------------------------------------------------------------------------------------------ bad input
def test_missing_corpus_is_one_clear_line(tmp_path):
    r = _cli("run", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_empty_corpus_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = _cli("run", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "empty" in r.stderr and "Traceback" not in r.stderr


def test_bad_override_names_the_field(tmp_path, tiny_corpus):
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "o"), "--set", "train.epochs=zero")
    assert r.returncode == 1 and "train.epochs" in r.stderr and "Traceback" not in r.stderr


def test_malformed_pairs_line_names_file_and_line(tmp_path, tiny_corpus):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "what does assert do", "positive_ids": ["assert.rst"]}\n{"query": oops}\n')
    out = tmp_path / "o"
    r = _cli("run", "--corpus", str(tiny_corpus), "--pairs", str(pairs), "--out", str(out), *FAST)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{pairs}:2" in r.stderr and "Traceback" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["stages"]["ingest"]["status"] == "succeeded" and summary["stages"]["sdg"]["status"] == "failed"
    assert (Path(summary["outputs"]["kfp_run"]) / "ingest" / "chunks" / "chunks.jsonl").is_file()  # nothing lost


def test_out_under_a_regular_file_is_one_line(tmp_path, tiny_corpus):
    (tmp_path / "afile").write_text("not a folder")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(out))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"error: --out {out}: {tmp_path / 'afile'} is a file, not a folder: choose another --out" in r.stderr
    r = _cli("ingest", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "afile" / "chunks"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (f"error: --out {tmp_path / 'afile' / 'chunks'}: {tmp_path / 'afile'} is a file, not a folder: choose "
            "another --out") in r.stderr
    assert (tmp_path / "afile").read_text() == "not a folder"  # nothing already there is lost


@pytest.mark.parametrize("value", ["train.epochs=inf", "train.epochs=nan", "gate.min_improvement=inf", "train.weight_decay=-inf",
                                   "sdg.llm.backoff_base_s=NaN", "train.batch_size=inf"])
def test_non_finite_numbers_are_rejected_with_the_field_name(tmp_path, tiny_corpus, value):
    field = value.split("=")[0]
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "o"), "--set", value)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"invalid configuration: {field}: Input should be a" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_failed_stage_is_its_own_one_line_in_console_and_summary(tmp_path, tiny_corpus):
    """A whitespace-only query fails validation; the user sees the check, the count, the row and the fix as
    "stage validate failed: ValidationFailed: ..." (no kfp boilerplate, no ANSI), and summary.json says the same."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"query": f"what does the {t} statement do", "positive_ids": [f"{t}.rst"]}
            for t in ("assert", "break", "continue", "del", "global", "if")]
    rows.append({"query": "   ", "positive_ids": ["pass.rst"], "query_id": "blank"})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    r = _cli("run", "--corpus", str(tiny_corpus), "--pairs", str(pairs), "--out", str(out), *FAST,
             "validate.min_train_pairs=1", "validate.min_eval_pairs=0")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    error = summary["error"]
    assert error.startswith("stage validate failed: ValidationFailed: pairs failed 1 of 10 data-quality checks: "
                            "query_not_blank (1 row(s), e.g. blank: '   '): give these pairs a real query or drop them")
    assert "\n" not in error and "\x1b" not in error and "Pipeline" not in error and "Inner task" not in error
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert line.startswith(f"error: {error} (log: {Path(summary['attempt']) / 'logs' / 'pipeline.log'}; summary: {out / 'summary.json'})")
    assert "Traceback" not in r.stderr and "Pipeline 'embedforge'" not in r.stderr
    assert summary["stages"]["sdg"]["status"] == "succeeded" and summary["stages"]["validate"]["status"] == "failed"


def test_llm_endpoint_problems_fail_before_any_stage(tmp_path, tiny_corpus):
    """The LLM pre-flight runs before ingest: no key for the remote default, or a refused port, is one line."""
    from llm_servers import free_port

    nokey = {"NVIDIA_API_KEY": "", "OPENAI_API_KEY": ""}
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "a"), "--set", "sdg.generator=llm", env=nokey)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no API key for sdg.llm.base_url https://integrate.api.nvidia.com/v1: set $NVIDIA_API_KEY" in r.stderr
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "b"), "--set", "sdg.generator=llm",
             "--set", f"sdg.llm.base_url={url}", env=nokey)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"sdg.llm.base_url {url} refused the connection: start the server or fix sdg.llm.base_url" in r.stderr
    assert not (tmp_path / "b" / ".kfp").exists()  # no stage started


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, tiny_corpus):
    out = tmp_path_factory.mktemp("e2e") / "run"
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(out), *FAST)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_run_writes_every_output(e2e_run):
    out, _ = e2e_run
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded"
    for stage in ("ingest", "sdg", "validate", "mine", "train", "evaluate", "export", "register", "gate"):
        assert s["stages"][stage]["status"] == "succeeded", stage
        assert s["stages"][stage]["seconds"] > 0
    c = s["counts"]
    assert c["documents"] == 16 and c["chunks"] >= 16
    assert c["pairs"]["train"] > 0 and c["pairs"]["eval"] > 0
    for side in ("base", "finetuned"):
        assert 0.0 <= s["evaluation"][side]["ndcg@10"] <= 1.0 and "recall@10" in s["evaluation"][side]
    assert s["registry"]["name"] == "embedforge-embedder" and int(s["registry"]["version"]) == 1
    assert isinstance(s["promotion"]["promoted"], bool) and s["promotion"]["reason"]
    assert (out / "latest" / "onnx" / "model.onnx").is_file() and (out / "mlflow.db").is_file()


def test_model_folder_loads_with_prompts(e2e_run):
    from sentence_transformers import SentenceTransformer

    out, _ = e2e_run
    model = SentenceTransformer(str(out / "latest" / "model"), device="cpu")
    assert set(model.prompts) >= {"query", "document"}
    emb = model.encode(["what does the assert statement do"], prompt_name="query", normalize_embeddings=True)
    assert emb.shape == (1, 384)


def test_promotion_writes_a_valid_triton_repository(e2e_run):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out, _ = e2e_run
    s = json.loads((out / "summary.json").read_text())
    if not s["promotion"]["promoted"]:
        assert s["stages"]["promote"]["status"] == "skipped" and not (out / "latest" / "triton").exists()
        pytest.skip(f"gate did not promote: {s['promotion']['reason']}")
    configs = {p.parent.name: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
               for p in (out / "latest" / "triton").rglob("config.pbtxt")}
    assert sorted(configs) == ["embedforge_embedder", "embedforge_embedder_onnx", "embedforge_embedder_tokenizer"]
    assert [i.name for i in configs["embedforge_embedder"].input] == ["text", "input_type"]  # the text-in ensemble
    assert [i.name for i in configs["embedforge_embedder_onnx"].input] == ["input_ids", "attention_mask"]
    assert (out / "latest" / "triton" / "embedforge_embedder_onnx" / str(s["registry"]["version"]) / "model.onnx").is_file()


def test_second_run_registers_v2_and_compares_with_champion(e2e_run, tiny_corpus):
    out, _ = e2e_run
    first = json.loads((out / "summary.json").read_text())
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert int(s["registry"]["version"]) == 2
    if first["promotion"]["promoted"]:
        # same data, same seed: the challenger cannot *beat* the champion, so it must not be promoted
        assert s["promotion"]["decision"]["champion_value"] is not None
        assert s["promotion"]["promoted"] is False and "champion" in s["promotion"]["reason"]


def test_run_with_the_llm_generator_against_a_local_openai_endpoint(tmp_path, tiny_corpus):
    """`embedforge run --set sdg.generator=llm` end to end through kfp.local against a real local HTTP endpoint
    (OpenAI chat-completions protocol): token usage reaches summary.json and MLflow, the key reaches the endpoint
    and nowhere else."""
    import sqlite3

    from llm_servers import FaultServer

    key = "nvapi-TEST-SECRET-7f3a9"
    out = tmp_path / "llm"
    with FaultServer(require_key=key) as srv:
        r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(out), *FAST,
                 "--set", "sdg.generator=llm", "--set", f"sdg.llm.base_url={srv.base_url}",
                 "--set", "sdg.llm.model=fault-model", "--set", "sdg.llm.num_pairs=3",
                 "--set", "sdg.llm.query_type_counts=multi_hop:1,structural:1,contextual:1",
                 env={"NVIDIA_API_KEY": key})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["counts"]["pairs"]["train"] > 0
    assert s["sdg"]["llm.qa.prompt_tokens"] > 0 and s["sdg"]["llm.judge.requests"] > 0
    assert (out / "sdg_work").is_dir()  # resumable results live in the output folder
    db = sqlite3.connect(out / "mlflow.db")
    names = {n for (n,) in db.execute("select key from metrics")}
    assert any(n.startswith("sdg_gen_llm_qa_prompt_tokens") for n in names), sorted(names)[:20]
    for f in [*out.rglob("*.json"), *out.rglob("*.jsonl"), *out.rglob("*.log"), out / "mlflow.db"]:
        assert key.encode() not in f.read_bytes(), f
    assert key not in r.stdout + r.stderr


def test_every_step_that_loads_the_base_model_gets_the_model_section():
    """sdg (de-duplication), mine, train and evaluate load the base model; register logs how: all five take the
    pipeline's one ``model_config`` parameter, so a KFP run overriding it changes them together."""
    import yaml

    spec = next(yaml.safe_load_all((Path(__file__).resolve().parents[2] / "pipelines" / "embedforge.yaml").read_text()))
    assert "model_config" in spec["root"]["inputDefinitions"]["parameters"]
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("sdg", "mine", "train", "evaluate", "register"):
        given = tasks[name]["inputs"]["parameters"]["model_config"]
        assert given == {"componentInputParameter": "model_config"}, name


def _platform(path: Path) -> dict:
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_step_is_bounded_runs_as_the_image_user_and_retries_only_when_safe(tmp_path):
    """Each step: a deadline, uid/gid 1000 (non-root), a size-limited /tmp and cache (a read-only root filesystem
    works), retries only for steps that are pure functions of their inputs; small steps have memory limits."""
    from embedforge.pipelines.pipeline import IDEMPOTENT, STEP_TIMEOUTS

    out = tmp_path / "p.yaml"
    assert _cli("compile", "--output", str(out)).returncode == 0
    spec, execs = _platform(out)
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():  # promote sits in the gate condition's sub-DAG
        tasks.update(component.get("dag", {}).get("tasks", {}))
    for step, seconds in STEP_TIMEOUTS.items():
        ex = execs[f"exec-{step}"]
        assert int(ex["activeDeadlineSeconds"]) == seconds, step
        assert ex["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, step
        mounts = {m["mountPath"]: m for m in ex["emptyDirMounts"]}
        assert mounts["/tmp"]["sizeLimit"] and mounts["/home/embedforge/.cache"]["sizeLimit"], step
        retry = tasks[step].get("retryPolicy", {}).get("maxRetryCount", 0)
        assert (retry > 0) == (step in IDEMPOTENT or step == "train"), (step, retry)
    assert "retryPolicy" not in tasks["register"] and "retryPolicy" not in tasks["promote"]
    containers = spec["deploymentSpec"]["executors"]
    for step in ("validate", "register", "promote", "report"):
        assert containers[f"exec-{step}"]["container"]["resources"]["memoryLimit"] == 8 * 2**30 / 1e9, step  # 8Gi in GB


def test_gpu_steps_tolerate_the_gpu_taint_and_match_the_given_node_labels(tmp_path):
    out = tmp_path / "p.yaml"
    r = _cli("compile", "--output", str(out), "--gpu-node-selector", "nvidia.com/gpu.product=H100",
             "--gpu-toleration", "dedicated=ml:NoSchedule", "--gpu-toleration", "nvidia.com/gpu:NoSchedule")
    assert r.returncode == 0, r.stderr
    _, execs = _platform(out)
    for step in ("mine", "train", "evaluate"):
        ex = execs[f"exec-{step}"]
        assert ex["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "H100"}, step
        assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in ex["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in ex["tolerations"]
    for step in ("ingest", "validate", "export", "register", "gate", "promote", "report"):
        assert "tolerations" not in execs[f"exec-{step}"] and "nodeSelector" not in execs[f"exec-{step}"], step
    bad = _cli("compile", "--output", str(tmp_path / "q.yaml"), "--gpu-toleration", "nvidia.com/gpu")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: --gpu-toleration:")


def test_mlflow_steps_read_the_tracking_uri_from_the_config_map_and_ingest_checks_it_first(tmp_path):
    """An empty tracking_uri parameter falls back to the ConfigMap's MLFLOW_TRACKING_URI; with neither, the run
    fails in its first step (ingest) with one line, not after training."""
    out = tmp_path / "p.yaml"
    assert _cli("compile", "--output", str(out)).returncode == 0
    spec, execs = _platform(out)
    for step in ("ingest", "register", "gate", "promote", "report"):
        cm = execs[f"exec-{step}"]["configMapAsEnv"][0]
        assert cm["configMapName"] == "embedforge-config" and cm["optional"] is True, step
        assert cm["keyToEnv"] == [{"configMapKey": "MLFLOW_TRACKING_URI", "envVar": "MLFLOW_TRACKING_URI"}], step
    ingest_inputs = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    assert ingest_inputs["tracking_uri"] == {"componentInputParameter": "tracking_uri"}


def test_ingest_fails_first_without_an_mlflow_store(tmp_path, tiny_corpus, base_model, monkeypatch):
    from embedforge.components.ingest.component import ingest
    from kfp import dsl

    from embedforge.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    chunks = dsl.Dataset(uri=str(tmp_path / "chunks"))
    with pytest.raises(ConfigError, match="no MLflow tracking URI"):
        ingest.python_func(corpus_path=str(tiny_corpus), base_model=base_model, config={}, chunks=chunks,
                           metrics=dsl.Metrics(uri=str(tmp_path / "m")), tracking_uri="")
    assert not (tmp_path / "chunks").exists()  # nothing was read or written


def test_compile_for_kubernetes_needs_an_image_and_submit_refuses_the_unpublished_default(tmp_path):
    """Nothing is published under the default image: compiling for a cluster without --image is one line, and
    submitting a package that names it (the reference YAML in pipelines/) is refused before any request."""
    r = _cli("compile", "--output", str(tmp_path / "p.yaml"), "--no-image")
    assert r.returncode == 1 and not (tmp_path / "p.yaml").exists()
    assert r.stderr.strip().splitlines()[-1].startswith("error: compile for Kubernetes needs --image")
    committed = Path(__file__).resolve().parents[2] / "pipelines" / "embedforge.yaml"
    r = _cli("submit", "--host", "http://127.0.0.1:9", "--package", str(committed), "--param", "corpus_uri=s3://b/c")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"runs the image {DEFAULT_IMAGE}, which is not published" in r.stderr.strip().splitlines()[-1]
    pinned = "registry.example/team/embedforge@sha256:" + "ab" * 32
    r = _cli("compile", "--output", str(tmp_path / "q.yaml"), "--image", pinned)
    assert r.returncode == 0 and pinned in (tmp_path / "q.yaml").read_text() and DEFAULT_IMAGE not in (tmp_path / "q.yaml").read_text()

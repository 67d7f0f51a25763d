"""Training you can watch: a real short training run of the real base model logs per-step metrics to a real MLflow
store (sqlite) while it runs, in a train run that register makes a child of the pipeline's run; its progress line
is what ``embedforge run`` shows; and MLflow failing never fails training."""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time

import numpy as np
import pytest

from embedforge import contracts
from embedforge.config import PromptsConfig, RegisterConfig, TrainConfig
from embedforge.local.logs import StageLog, StageState
from embedforge.registry.live_run import KFP_RUN_TAG, PARENT_TAG, STAGE_TAG
from embedforge.stages import train

pytest_plugins = ["conftest_mlflow"]

PROMPTS = PromptsConfig(query="query: ", document="passage: ")
SMALL = {"epochs": 1, "batch_size": 4, "max_seq_length": 32, "learning_rate": 2e-4, "warmup_ratio": 0.0, "seed": 7,
         "device": "cpu", "log_every_steps": 2, "checkpoint_minutes": 0}
KFP_RUN = "kfp-run-live-7"


@pytest.fixture(scope="module")
def small_mined(tmp_path_factory, mined_dir):
    """22 of the shared mined rows (one hard negative each): 6 steps of 4 rows, the last one short."""
    root = tmp_path_factory.mktemp("live_mined")
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in contracts.read_train_examples(mined_dir)[:22]]
    contracts.write_jsonl(root / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return root


def _destination(monkeypatch, uri: str, experiment: str, kfp_run: str = KFP_RUN) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.setenv("KFP_RUN_ID", kfp_run)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")


def test_a_training_run_logs_its_steps_live_under_the_pipeline_run(tmp_path, monkeypatch, caplog, small_mined,
                                                                     base_model, tiny_model, tiny_onnx_dir,
                                                                     evaluation_dir_factory, validation_dir):
    from mlflow import MlflowClient

    from embedforge.stages import register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _destination(monkeypatch, uri, "live")
    caplog.set_level(logging.INFO, logger="embedforge")
    manifest = train.run(small_mined, tmp_path / "model", TrainConfig(**SMALL), base_model=base_model, prompts=PROMPTS)
    steps = manifest.counts["steps"]
    assert steps == 6

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("live")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`{STAGE_TAG}` = 'train'")
    assert run.info.status == "FINISHED" and run.data.tags[KFP_RUN_TAG] == KFP_RUN
    assert run.data.params["train.log_every_steps"] == "2" and run.data.params["prompts.query"] == "query: "

    def history(key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    loss = history("train/loss")
    assert [s for s, _ in loss] == [2, 4, 6]  # every 2 steps, and the last
    # each logged loss is the mean of the step losses since an earlier report (the manifest has them all: with 6
    # steps its loss history keeps one point per step)
    per_step = {p.step: p.loss for p in manifest.result.loss_history}
    assert sorted(per_step) == list(range(1, steps + 1))
    previous = 0
    for step, value in loss:
        assert any(value == pytest.approx(np.mean([per_step[s] for s in range(j + 1, step + 1)]), abs=1e-4)
                   for j in range(previous, step)), (step, value)
        previous = step
    lr = history("train/learning_rate")
    assert [s for s, _ in lr] == [2, 4, 6] and all(a >= b >= 0 for (_, a), (_, b) in zip(lr, lr[1:]))
    assert lr[0][1] <= SMALL["learning_rate"] and lr[0][1] > 0
    samples, tokens = dict(history("train/samples_per_second")), dict(history("train/tokens_per_second"))
    assert all(v > 0 for v in samples.values()) and all(tokens[s] > 3 * samples[s] for s in samples)  # >= 3 texts/row
    assert "train/gpu_memory_peak_mib" not in run.data.metrics  # (CPU)
    assert run.data.metrics["train/final_loss"] == pytest.approx(manifest.result.final_loss)
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)

    # the progress line: logged at the last step, and what `embedforge run` shows on the console
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: step ")]
    assert lines and lines[-1].startswith(f"train: step {steps}/{steps} (100 %), loss ") and "ETA 0s" in lines[-1]
    events = []
    log = StageLog(log=io.StringIO(), stages={"train": StageState()},
                   on_event=lambda stage, status: events.append((stage, status)))
    log.write(f"INFO embedforge.stages.train.telemetry: {lines[-1]}\n")
    assert events == [("train", f"progress: step {steps}/{steps}, loss {lines[-1].split('loss ')[1].split(',')[0]}, "
                                "ETA 0s")]

    # register (the pipeline's run) adopts it as its child
    register.run(tiny_model, tiny_onnx_dir, evaluation_dir_factory(tmp_path / "evaluation", {"ndcg@10": 0.5},
                                                                   {"ndcg@10": 0.4}),
                 validation_dir, tmp_path / "registry", RegisterConfig(model_name="live-model", experiment="live"),
                 uri, params={}, kfp_run_id=KFP_RUN)
    record = contracts.read_json(tmp_path / "registry" / contracts.REGISTRY_FILE)
    assert client.get_run(run.info.run_id).data.tags[PARENT_TAG] == record["run_id"]
    assert PARENT_TAG not in client.get_run(record["run_id"]).data.tags


def test_mlflow_failing_is_one_warning_and_training_goes_on(tmp_path, monkeypatch, caplog, small_mined, base_model):
    """A store that cannot be opened, and a run that MLflow refuses to log to once training started (it was
    deleted meanwhile): each is one warning, and the model is trained and saved all the same."""
    from mlflow import MlflowClient

    (tmp_path / "folder.db").mkdir()  # a folder where the sqlite file should be: the store cannot be opened
    _destination(monkeypatch, f"sqlite:///{tmp_path / 'folder.db'}", "broken")
    caplog.set_level(logging.INFO, logger="embedforge")
    assert train.run(small_mined, tmp_path / "a", TrainConfig(**SMALL), base_model=base_model, prompts=PROMPTS)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "cannot open a run" in warnings[0].getMessage()
    assert contracts.has_manifest(tmp_path / "a")

    caplog.clear()  # a server that is not there: one warning after a bounded wait, not MLflow's minutes of retries
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    _destination(monkeypatch, closed, "unreachable")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # MLflow's default: minutes of backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    assert train.run(small_mined, tmp_path / "c", TrainConfig(**SMALL), base_model=base_model, prompts=PROMPTS)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "cannot open a run" in warnings[0].getMessage(), warnings
    assert (os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) == ("1", "10")
    assert contracts.has_manifest(tmp_path / "c")

    caplog.clear()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _destination(monkeypatch, uri, "deleted")
    client, deleted = MlflowClient(uri), []

    def delete_the_train_run() -> None:  # as soon as it exists: the step's next request is refused
        deadline = time.time() + 300
        while not deleted and time.time() < deadline:
            exp = client.get_experiment_by_name("deleted")
            for r in client.search_runs([exp.experiment_id]) if exp else []:
                client.delete_run(r.info.run_id)
                deleted.append(r.info.run_id)
            time.sleep(0.05)

    watcher = threading.Thread(target=delete_the_train_run, daemon=True)
    watcher.start()
    manifest = train.run(small_mined, tmp_path / "b", TrainConfig(**SMALL), base_model=base_model, prompts=PROMPTS)
    watcher.join(timeout=5)
    assert deleted and manifest.counts["steps"] == 6 and contracts.has_manifest(tmp_path / "b")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("embedforge")]
    assert len(warnings) == 1 and "training goes on without live metrics" in warnings[0].getMessage(), warnings
    assert not client.get_metric_history(deleted[0], "train/loss")


def test_a_terminated_training_process_marks_its_live_run_killed(tmp_path, small_mined, base_model):
    """SIGTERM (what torchrun, Kubernetes and ``embedforge run`` send a worker they end) unwinds the process like
    Ctrl-C: the live run it opened ends KILLED, not RUNNING forever, and the exit status is the shell's 143."""
    import signal
    import subprocess
    import sys

    from mlflow import MlflowClient

    from embedforge.config import PipelineConfig, write_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = write_config(tmp_path / "config.yaml", PipelineConfig(
        base_model=base_model, prompts=PROMPTS, train=TrainConfig(**{**SMALL, "epochs": 200, "log_every_steps": 1})))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "live", "KFP_RUN_ID": KFP_RUN}
    err_file = tmp_path / "train.err"
    with err_file.open("w") as err_out:
        proc = subprocess.Popen([sys.executable, "-m", "embedforge.stages.train", "--mined", str(small_mined),
                                 "--out", str(tmp_path / "model"), "--config", str(config)],
                                env=env, stdout=err_out, stderr=subprocess.STDOUT, text=True)
    client = None  # made once the process has made the store: a client opening it first would hold a file the
    try:           # process's schema set-up replaces
        deadline, run = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            if "train: live MLflow run" not in err_file.read_text():
                time.sleep(0.5)
                continue
            client = client or MlflowClient(uri)
            experiment = client.get_experiment_by_name("live")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None and run.info.status == "RUNNING", err_file.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err_file.read_text()
    assert proc.returncode == 143, err[-2000:]
    assert "train: interrupted by SIGTERM" in err
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert not (tmp_path / "model" / contracts.MANIFEST).exists()  # no model claims to be finished

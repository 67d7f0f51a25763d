"""The train step's own MLflow run, written while it trains: per-step loss, learning rate, throughput and GPU memory,
plus MLflow's system metrics (CPU, memory, disk, network, GPU utilisation; psutil, and pynvml where installed).

The pipeline's MLflow run is register's (:mod:`embedforge.stages.register`: one run per pipeline run), which does not
exist yet while train runs — and in KFP every step is a pod of its own. So the train run is tagged
``embedforge.stage=train`` and ``embedforge.kfp_run_id=<the KFP run id>``, and register, once its run exists, makes
every train run of the same KFP run its child (``mlflow.parentRunId``, :func:`adopt_train_runs`).

Where: the tracking URI of ``$MLFLOW_TRACKING_URI``, the experiment of ``$MLFLOW_EXPERIMENT_NAME`` (default
``embedforge``), the KFP run id of ``$KFP_RUN_ID``; the train component sets them from the pipeline's
``tracking_uri``, ``register_config.experiment`` and run id. Without a tracking URI there is no live run.

MLflow is an observer here: a tracking server that is down, slow or refuses a request must never fail or stop
training. The first failure is logged as one warning and the run stops logging; training goes on.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from embedforge.redact import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: The environment the live run reads its destination from (see the module docstring).
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
KFP_RUN_ENV = "KFP_RUN_ID"
DEFAULT_EXPERIMENT = "embedforge"
#: Tags of a train run; register finds its children by them.
STAGE_TAG, KFP_RUN_TAG, PARENT_TAG = "embedforge.stage", "embedforge.kfp_run_id", "mlflow.parentRunId"
#: Seconds between two samples of MLflow's system metrics.
SYSTEM_METRICS_INTERVAL_S = 10.0
#: The live run's HTTP requests: at most this many retries and seconds a request (MLflow's defaults retry with
#: exponential backoff for minutes, which would hold training up that long when the server is unreachable).
HTTP_MAX_RETRIES, HTTP_TIMEOUT_S = 1, 10


def _bound_http_requests() -> None:
    """Cap this process's MLflow HTTP retries and request timeout (the train process talks to MLflow only through
    its live run), keeping a smaller value the environment already sets."""
    for env, cap in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_MAX_RETRIES),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)):
        try:
            value = min(int(os.environ.get(env, cap)), cap)
        except ValueError:
            value = cap
        os.environ[env] = str(value)


def use_destination(tracking_uri: str = "", experiment: str = "", kfp_run_id: str = "") -> None:
    """Point this process's (and its children's: torchrun workers) live train run at ``tracking_uri``,
    ``experiment`` and ``kfp_run_id``; an empty argument leaves what the environment says."""
    for env, value in (("MLFLOW_TRACKING_URI", tracking_uri), (EXPERIMENT_ENV, experiment), (KFP_RUN_ENV, kfp_run_id)):
        if value:
            os.environ[env] = value


class LiveRun:
    """One MLflow run for one train step; every method is a no-op once MLflow failed (or when there is no run)."""

    def __init__(self, client: "MlflowClient | None" = None, run_id: str = "", uri: str = ""):
        self.client, self.run_id, self.uri = client, run_id, uri
        self._monitor: Any = None

    @property
    def active(self) -> bool:
        return self.client is not None and bool(self.run_id)

    @classmethod
    def open(cls, params: dict[str, Any], base_model: str, enabled: bool = True) -> "LiveRun":
        """Open the run (tags above, ``params`` as params) and start the system-metrics monitor; an inactive
        :class:`LiveRun` when ``enabled`` is false, no tracking URI is set, or MLflow fails."""
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not enabled or not uri:
            return cls()
        live = cls(uri=uri)
        _bound_http_requests()
        try:
            from embedforge.registry.mlflow import (
                client_for,
                flatten_params,
                get_or_create_experiment,
                log_params,
            )

            client = client_for(uri)
            experiment_id = get_or_create_experiment(client, os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
                                                     uri)
            tags = {STAGE_TAG: "train", "mlflow.runName": "train", "embedforge.base_model": base_model}
            if kfp_run := os.environ.get(KFP_RUN_ENV, ""):
                tags[KFP_RUN_TAG] = kfp_run
            run = client.create_run(experiment_id, tags=tags)
            live.client, live.run_id = client, run.info.run_id
            log_params(client, live.run_id, flatten_params(params))
            live._start_system_metrics()
            log.info("train: live MLflow run %s at %s", live.run_id, redact(uri))
        except Exception as exc:  # noqa: BLE001 - any MLflow failure: train goes on without it
            live._fail("open a run", exc)
        return live

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                             tracking_uri=self.uri)
        self._monitor.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` at ``step`` in one request."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        except Exception as exc:  # noqa: BLE001
            self._fail(f"log step {step}", exc)

    def finish(self, status: str = "FINISHED") -> None:
        """Stop the system metrics and end the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # noqa: BLE001 - its last sample is not worth a warning
                pass
            self._monitor = None
        if not self.active:
            return
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # noqa: BLE001
            self._fail("end the run", exc)

    def _fail(self, action: str, exc: Exception) -> None:
        """One warning, then no more MLflow calls from this run (training goes on)."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("train: MLflow at %s: cannot %s (%s); training goes on without live metrics",
                    redact(self.uri) or "?", action, redact(first[:300]))
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # noqa: BLE001
                pass
            self._monitor = None
        self.client, self.run_id = None, ""


def adopt_train_runs(client: "MlflowClient", experiment_ids: list[str], kfp_run_id: str, parent_run_id: str
                     ) -> list[str]:
    """Make the train runs of KFP run ``kfp_run_id`` children of ``parent_run_id`` (the pipeline's run); returns
    their ids. Nothing without a KFP run id (a stage run alone)."""
    if not kfp_run_id:
        return []
    quoted = kfp_run_id.replace("'", "")
    runs = client.search_runs(experiment_ids, f"tags.`{KFP_RUN_TAG}` = '{quoted}' and tags.`{STAGE_TAG}` = 'train'")
    for run in runs:
        client.set_tag(run.info.run_id, PARENT_TAG, parent_run_id)
    return [r.info.run_id for r in runs]


__all__ = ["LiveRun", "adopt_train_runs", "use_destination"]

"""A registered version exists only together with its record: registration is committed in MLflow, and an
uncommitted one is cleaned up by the next run against the same tracking store.

The register stage (:mod:`embedforge.stages.register`) does, in this order:

1. create the MLflow run tagged ``embedforge.record=pending`` and ``embedforge.owner`` (host, pid and start time
   of the process doing it);
2. log params, metrics, the model, and create the model version (tagged with the run id);
3. write its record (``registry.json`` + ``manifest.json``);
4. *commit*: tag the run ``embedforge.record=written`` and end it FINISHED.

A process killed anywhere before 4 (SIGKILL, OOM, a node lost) leaves a run tagged ``pending`` and possibly a
version without a record. :func:`recover` finds such runs and, for each run that is certainly dead — ended
FAILED/KILLED, or still RUNNING although its owner process on this host is gone — either commits it (its record
was written: killed between 3 and 4; only a caller that can see records, the local runner, knows that) or
deletes its model versions, tags it ``embedforge.record=discarded`` and marks it KILLED. A RUNNING run owned by a
live process, or by a process on another host, is left alone: it may be registering right now. ``recover`` runs
at the start of every register stage and of every ``embedforge run``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RECORD_TAG = "embedforge.record"
OWNER_TAG = "embedforge.owner"
PENDING, WRITTEN, DISCARDED = "pending", "written", "discarded"


def owner_tag() -> str:
    """This process, as stored in ``embedforge.owner``: host, pid and start time (a reused pid is not alive)."""
    import psutil

    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": round(psutil.Process().create_time(), 2)}, sort_keys=True)


def owner_alive(tag: str | None) -> bool | None:
    """Whether the process named by an ``embedforge.owner`` tag still runs; None when it is not on this host
    (or the tag is unreadable), i.e. nobody here can tell."""
    import psutil

    try:
        owner = json.loads(tag or "")
        if owner["host"] != socket.gethostname():
            return None
        proc = psutil.Process(int(owner["pid"]))
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - float(owner["started"])) < 1.0
    except psutil.NoSuchProcess:
        return False
    except (ValueError, KeyError, TypeError, psutil.Error):
        return None


def pending_tags() -> dict[str, str]:
    """The tags a register run starts with (step 1)."""
    return {RECORD_TAG: PENDING, OWNER_TAG: owner_tag()}


def commit(client: "MlflowClient", run_id: str) -> None:
    """Step 4: the record is written; the run and its version are complete."""
    client.set_tag(run_id, RECORD_TAG, WRITTEN)
    client.set_terminated(run_id, "FINISHED")


def discard(client: "MlflowClient", run_id: str, status: str = "KILLED") -> list[str]:
    """Delete the model versions ``run_id`` registered, tag it discarded and end it (if still RUNNING) with
    ``status``; return the deleted versions as ``name vN``. Safe to repeat."""
    deleted = []
    for mv in client.search_model_versions(f"run_id='{run_id}'"):
        client.delete_model_version(mv.name, mv.version)
        deleted.append(f"{mv.name} v{mv.version}")
    client.set_tag(run_id, RECORD_TAG, DISCARDED)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status)
    return deleted


def is_dead(status: str, owner: str | None) -> bool:
    """A pending run nobody will finish: it ended (FAILED/KILLED) or its owner process on this host is gone."""
    if status in ("FAILED", "KILLED"):
        return True
    return status == "RUNNING" and owner_alive(owner) is False


def recover(client: "MlflowClient", recorded_run_ids: Iterable[str] = ()) -> list[str]:
    """Commit or clean up every dead, uncommitted register run in the store; return one line per action.

    Args:
        client: Client of the tracking (and registry) store.
        recorded_run_ids: Run ids whose record is known to exist (the local runner reads them from the
            register folders under ``--out``): these are committed instead of discarded.
    """
    from mlflow.entities import ViewType

    recorded = set(recorded_run_ids)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    actions: list[str] = []
    for start in range(0, len(experiments), 100):  # search_runs takes at most 100 experiments
        runs = client.search_runs(experiments[start:start + 100], f"tags.`{RECORD_TAG}` = '{PENDING}'",
                                  run_view_type=ViewType.ALL, max_results=1000)
        for run in runs:
            run_id, status = run.info.run_id, run.info.status
            if not is_dead(status, run.data.tags.get(OWNER_TAG)):
                continue
            if run_id in recorded:
                commit(client, run_id)
                actions.append(f"MLflow run {run_id}: its record exists; committed it (FINISHED)")
                continue
            deleted = discard(client, run_id)
            what = f"deleted {', '.join(deleted)} (registered without a record)" if deleted else "no version to delete"
            ended = "; run marked KILLED" if status == "RUNNING" else ""
            actions.append(f"MLflow run {run_id} ({status}, its process is gone): {what}{ended}")
    for line in actions:
        log.warning("%s", line)
    return actions

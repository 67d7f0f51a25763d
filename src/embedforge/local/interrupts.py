"""Ending a local run cleanly on Ctrl-C / SIGTERM, after :mod:`embedforge.signals` has ended its stage processes:
the MLflow run of an interrupted register stage marked KILLED and its version (registered without a record) deleted
— see :mod:`embedforge.registry.recovery`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def kill_mlflow_runs(kfp_root: Path, tracking_uri: str) -> list[str]:
    """End the MLflow runs this attempt's register stage left RUNNING; return their ids. A run whose record was
    written is committed; any other is marked KILLED and the version it registered is deleted (it has no record).

    The register stage writes its run id (:data:`embedforge.stages.register.RUN_ID_FILE`) before logging anything."""
    from embedforge.contracts import has_manifest
    from embedforge.registry.mlflow import RUN_ID_FILE, client_for
    from embedforge.registry.recovery import commit, discard

    killed = []
    for f in kfp_root.glob(f"*/register/*/{RUN_ID_FILE}"):
        run_id = f.read_text(encoding="utf-8").strip()
        try:
            client = client_for(tracking_uri)
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            if has_manifest(f.parent):
                commit(client, run_id)
            else:
                discard(client, run_id, status="KILLED")
                killed.append(run_id)
        except Exception as exc:  # an unreachable store must not cost the interrupted summary
            print(f"could not mark MLflow run {run_id} KILLED: {exc}", file=sys.stderr)
    return killed

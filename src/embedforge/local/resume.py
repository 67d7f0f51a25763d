"""``embedforge run --resume``: finish the latest interrupted or failed attempt under ``--out`` without re-running
the stages it finished.

Every attempt's ``summary.json`` carries a *fingerprint*: the sha256 of the pipeline arguments (the resolved
config, base model, tracking URI) and of the content of the corpus, the pairs file and the external BEIR folder.
``--resume`` refuses with one line when the latest attempt succeeded, is still running, or has a different
fingerprint (another config or changed inputs would make a result that matches neither).

The resumed attempt is a new attempt folder, complete and self-consistent like any other: for each finished
stage — the longest prefix of the pipeline's stages (in order) whose artifact has a valid manifest and whose KFP
task wrote its outputs — kfp.local does not start the component; :func:`reusing_finished_tasks` hard-links the
earlier task folder into the new run's folder instead (a copy where links cannot be made) and hands its outputs
on, so later stages read artifacts inside the new attempt. A finished ``register`` stage is only reused when its
version still exists in the store (it may have been cleaned up, :mod:`embedforge.registry.recovery`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from embedforge.contracts import has_manifest, read_json, read_manifest
from embedforge.disk import link_tree
from embedforge.errors import InputError

#: What kfp.local writes last for a task (its output parameters and artifacts).
_EXECUTOR_OUTPUT = "executor_output.json"


@dataclass
class Resumable:
    """The attempt being resumed and its finished tasks (task name -> that task's folder in its KFP run)."""

    attempt: Path
    finished: dict[str, Path] = field(default_factory=dict)


def latest_attempt(out: Path) -> Path | None:
    if (out / "latest").is_dir():
        return (out / "latest").resolve()
    if (out / "latest.json").is_file():
        return Path(read_json(out / "latest.json")["attempt"])
    return None


def _still_running(summary: dict[str, Any]) -> bool:
    import psutil

    pid = summary.get("pid")
    return summary.get("status") == "running" and isinstance(pid, int) and psutil.pid_exists(pid)


def _finished_task(run_dir: Path, task: str, artifact: str) -> Path | None:
    root = run_dir / task
    if not (root / _EXECUTOR_OUTPUT).is_file() or not has_manifest(root / artifact):
        return None
    try:
        read_manifest(root / artifact)
    except InputError:  # another schema version, a damaged file: run the stage again
        return None
    return root


def _version_exists(register_dir: Path, tracking_uri: str) -> bool:
    from embedforge.registry.mlflow import client_for

    rec = read_manifest(register_dir).result
    try:
        client_for(tracking_uri).get_model_version(rec.model_name, rec.version)
        return True
    except Exception:  # deleted as registered without a record, or another store: register again
        return False


def find_resumable(out: Path, fp: str, stages: dict[str, str], tracking_uri: str) -> Resumable:
    """The latest attempt under ``out`` and its finished stages; InputError (one line) when it cannot be resumed."""
    attempt = latest_attempt(out)
    if attempt is None or not (attempt / "summary.json").is_file():
        raise InputError(f"--resume: nothing to resume in {out}: no earlier run; run without --resume")
    summary = read_json(attempt / "summary.json")
    status = summary.get("status")
    if _still_running(summary):
        raise InputError(f"--resume: the latest run {attempt} is still running (pid {summary['pid']}); wait for it or stop it")
    if status == "succeeded":
        raise InputError(f"--resume: the latest run {attempt} succeeded: nothing to resume; run without --resume for a new one")
    if summary.get("fingerprint") != fp:
        raise InputError(f"--resume: the config or inputs differ from those of the interrupted run {attempt} "
                         "(or it predates --resume): resume with the same corpus, pairs and settings, or run without --resume")
    runs = sorted((attempt / ".kfp").glob("*-*"))
    resumable = Resumable(attempt)
    for task, artifact in stages.items():  # a prefix in pipeline order: a later stage depends on earlier ones
        root = _finished_task(runs[-1], task, artifact) if runs else None
        if root is None or (task == "register" and not _version_exists(root / artifact, tracking_uri)):
            break
        resumable.finished[task] = root
    if not resumable.finished:
        raise InputError(f"--resume: no stage of {attempt} finished: nothing to reuse; run without --resume")
    return resumable


@contextmanager
def reusing_finished_tasks(finished: dict[str, Path], on_reuse: Callable[[str, Path], None]) -> Iterator[None]:
    """While active, kfp.local does not run a task named in ``finished``: it gets the earlier task folder (linked
    into this run's folder, executor output rewritten to the new paths) and its outputs; ``on_reuse(task, old)``
    is called for each. Other tasks run as usual."""
    from kfp.local import executor_input_utils, executor_output_utils, task_dispatcher
    from kfp.local import status as kfp_status

    original = task_dispatcher.run_single_task_implementation

    def run_or_reuse(**kw: Any) -> tuple[dict[str, Any], Any]:
        task = executor_input_utils.get_local_task_resource_name(kw["component_name"])
        old = finished.get(task)
        if old is None:
            return original(**kw)
        new = Path(executor_input_utils.construct_local_task_root(kw["pipeline_root"], kw["pipeline_resource_name"], task))
        link_tree(old, new)
        out_file = new / _EXECUTOR_OUTPUT
        text = out_file.read_text(encoding="utf-8").replace(str(old), str(new))
        out_file.unlink()  # a link to the earlier file: write a new one, never through the link
        out_file.write_text(text, encoding="utf-8")
        executor_input = executor_input_utils.construct_executor_input(
            component_spec=kw["component_spec"], arguments=kw["arguments"], task_root=str(new),
            block_input_artifact=kw["block_input_artifact"])
        on_reuse(task, old)
        outputs = executor_output_utils.get_outputs_for_task(executor_input=executor_input,
                                                             component_spec=kw["component_spec"])
        return outputs, kfp_status.Status.SUCCESS

    task_dispatcher.run_single_task_implementation = run_or_reuse
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original

"""Run the whole pipeline on this machine through ``kfp.local`` and collect its results into one folder.

Each ``embedforge run`` is one *attempt* with its own folder ``<out>/runs/<UTC time>-<n>/``, so runs never mix:
the attempt holds its complete result (``summary.json``, ``logs/pipeline.log``, ``model/``, ``onnx/``,
``triton/``, ``report.html`` and the KFP outputs in ``.kfp/``). ``<out>/latest`` is a symlink to the newest attempt
(``latest.json`` names it where symlinks cannot be made) and ``<out>/summary.json`` is a copy of its summary. What
must carry over between attempts stays shared at ``<out>``: the MLflow store (``mlflow.db``, ``mlartifacts/``, so
versions and the champion persist) and the LLM SDG work folder (``sdg_work/``, so generation resumes).

The components run exactly as on Kubernetes, each in a subprocess of this interpreter
(``SubprocessRunner(use_venv=False)``); their logs go to the attempt's ``logs/pipeline.log``, stage progress to
the console. ``summary.json`` is written also when a stage fails or the run is interrupted (Ctrl-C, SIGTERM): the
running stage's processes are ended, an MLflow run it left RUNNING is marked KILLED, and nothing already produced
is lost. ``--resume`` finishes the latest interrupted/failed attempt in a new one (:mod:`embedforge.local.resume`);
stage temp files stay under the attempt and large outputs are hard links, not copies (:mod:`embedforge.disk`).

One run at a time holds ``--out`` (:func:`embedforge.local.attempts.holding_out`), from its preflight — inputs,
the LLM endpoint, and the MLflow store, which must read back whole (:func:`check_store`) — to its summary.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Iterator

from embedforge.config import PipelineConfig
from embedforge.contracts import (
    fingerprint,
    has_manifest,
)
from embedforge.errors import (
    EmbedforgeError,
    InputError,
)
from embedforge.local.attempts import (
    check_out,
    default_tracking_uri,
    holding_out,
    new_attempt,
    point_latest,
    write_summary,
)
from embedforge.local.interrupts import kill_mlflow_runs
from embedforge.local.kfp_local import program_only_python_rewrite
from embedforge.local.logs import StageLog, StageState
from embedforge.local.resume import Resumable, find_resumable, reusing_finished_tasks
from embedforge.local.summary import collect
from embedforge.signals import end_child_processes, interruptible


class PipelineFailed(EmbedforgeError):
    """A stage failed; the message is the stage's own one-line error."""


class PipelineInterrupted(EmbedforgeError):
    """Ctrl-C or SIGTERM ended the run; ``exit_code`` is the shell's 128 + signal number (130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextmanager
def stage_temp_dir(root: Path) -> Iterator[Path]:
    """While inside, ``$TMPDIR`` of the stage processes is ``<root>/tmp`` (KFP's ``mktemp -d`` for each task's
    program, the stages' own temp files), removed at the end: no temp folder is left in /tmp."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        yield tmp
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        shutil.rmtree(tmp, ignore_errors=True)


def check_store(tracking_uri: str) -> None:
    """Preflight of a run's local sqlite MLflow store, when it exists: a half-made one is made complete, a damaged
    one (not a database, truncated, pages that do not read back) is one line naming the file — before the first
    stage, not at register after the run trained (:func:`embedforge.registry.mlflow.ensure_sqlite_store`). A new
    store is made by the register stage; a remote store is checked by it too.

    Raises:
        MlflowStoreError: The store cannot be used.
    """
    from embedforge.registry.mlflow import ensure_sqlite_store, sqlite_path

    path = sqlite_path(tracking_uri)
    if path is not None and path.exists():
        ensure_sqlite_store(tracking_uri, check_integrity=True)


def recover_registrations(out: Path, tracking_uri: str) -> list[str]:
    """Commit or clean up versions that killed register stages left in this run's MLflow store
    (:func:`embedforge.registry.recovery.recover`), knowing the records under ``out``. Only for a sqlite store
    that exists already (a remote store is recovered by the register stage itself, which has a timeout budget)."""
    from embedforge.registry.mlflow import RUN_ID_FILE, client_for
    from embedforge.registry.recovery import recover

    if not tracking_uri.startswith("sqlite:///") or not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return []
    recorded = [f.read_text(encoding="utf-8").strip() for f in out.glob(f"runs/*/.kfp/*/register/*/{RUN_ID_FILE}")
                if has_manifest(f.parent)]
    try:
        return recover(client_for(tracking_uri), recorded)
    except Exception as exc:  # never cost the run: the register stage recovers again
        return [f"could not check {tracking_uri} for versions registered without a record: {exc}"]


def check_inputs(corpus: Path, pairs: Path | None, eval_beir: Path | None) -> None:
    """Cheap checks before any stage starts, so bad input fails in a second with a clear message."""
    if not corpus.exists():
        raise InputError(f"corpus {corpus} does not exist: pass --corpus with a folder of documents or a BEIR corpus.jsonl")
    if corpus.is_dir() and not any(p.is_file() for p in corpus.rglob("*")):
        raise InputError(f"corpus folder {corpus} is empty: add .txt/.md/.rst/.html files or a corpus.jsonl")
    if pairs is not None and not pairs.is_file():
        raise InputError(f"pairs file {pairs} does not exist")
    if eval_beir is not None:
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            if not (eval_beir / name).is_file():
                raise InputError(f"--eval-beir {eval_beir} has no {name} (expected BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv)")


def run_pipeline(
    cfg: PipelineConfig,
    corpus: Path,
    out: Path,
    pairs: Path | None = None,
    eval_beir: Path | None = None,
    on_event: Callable[[str, str], None] | None = None,
    echo_logs: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run every stage locally; return (and write) the summary. Raises PipelineFailed after writing it.

    ``resume``: reuse the finished stages of the latest interrupted/failed attempt (:mod:`embedforge.local.resume`).

    Raises:
        OutputBusy: Another run holds ``out``.
        MlflowStoreError: The run's sqlite MLflow store is damaged (checked before the first stage).
    """
    corpus, out = corpus.resolve(), out.resolve()
    pairs = pairs.resolve() if pairs else None
    eval_beir = eval_beir.resolve() if eval_beir else None
    check_inputs(corpus, pairs, eval_beir)
    check_out(out)
    with holding_out(out):  # one run per --out at a time, from its first check to its summary
        return _run_holding_out(cfg, corpus, out, pairs, eval_beir, on_event, echo_logs, resume)


def _run_holding_out(cfg: PipelineConfig, corpus: Path, out: Path, pairs: Path | None, eval_beir: Path | None,
                     on_event: Callable[[str, str], None] | None, echo_logs: bool, resume: bool) -> dict[str, Any]:
    """:func:`run_pipeline` once it holds ``out``: preflight, then the stages."""
    from kfp import local

    from embedforge.pipelines.pipeline import STAGES, build_pipeline, pipeline_arguments

    # credentials in sdg.llm.base_url travel in the environment the stage processes inherit, never in the
    # arguments kfp.local writes into logs, manifests and the MLflow params
    os.environ.update(cfg.sdg.llm.hide_url_credentials())
    if cfg.sdg.generator == "llm" and pairs is None:
        from embedforge.stages.sdg.llm.preflight import preflight

        preflight(cfg.sdg.llm)  # a missing key or a stopped server fails in seconds, before ingest
    if cfg.sdg.generator == "llm" and not cfg.sdg.llm.work_dir:
        cfg.sdg.llm.work_dir = str(out / "sdg_work")  # resumable LLM results survive reruns into the same --out
    if not cfg.train.work_dir:
        cfg.train.work_dir = str(out / "train_work")  # finished probes survive a rerun (--resume) too
    for section in (cfg.sdg.llm, cfg.mine, cfg.evaluate):  # one ONNX graph per model for sdg, mine, evaluate and
        if not section.encode.cache_dir:                         # gate, and later runs
            section.encode.cache_dir = str(out / "encode_cache")
    import torch

    cfg, profile_changes = cfg.resolved(cuda_available=torch.cuda.is_available(), pairs_given=bool(pairs))
    tracking_uri = default_tracking_uri(out)
    args = pipeline_arguments(cfg, str(corpus), str(pairs or ""), str(eval_beir or ""), tracking_uri)
    meta: dict[str, Any] = {"fingerprint": fingerprint(args, [corpus, pairs, eval_beir]), "pid": os.getpid()}
    check_store(tracking_uri)  # a damaged store fails now, not at register after training
    recovered = recover_registrations(out, tracking_uri)
    resumed = find_resumable(out, meta["fingerprint"], STAGES, tracking_uri) if resume else Resumable(out)
    if resume:
        meta["resumed_from"] = str(resumed.attempt)
    attempt = new_attempt(out)
    (attempt / "logs").mkdir()
    point_latest(out, attempt)
    root = attempt / ".kfp"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    stages = {name: StageState() for name in STAGES}
    started = time.time()
    error: str | None = None
    log_file = attempt / "logs" / "pipeline.log"
    write_summary(out, attempt, {"status": "running", "attempt": str(attempt), "log": str(log_file), **meta})
    with log_file.open("w", encoding="utf-8") as log, interruptible() as interrupted, stage_temp_dir(root):
        tee = StageLog(log=log, stages=stages, on_event=on_event, echo=sys.__stdout__ if echo_logs else None)
        for line in recovered:
            print(line, file=log)

        def on_reuse(task: str, old: Path) -> None:
            print(f"Task '{task}' reused from {old} (finished there; not run again)", file=tee)
            if task in stages:
                stages[task].status = "reused"
                tee._emit(task, "reused")

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
                   workspace_root=str(root / "workspace"))  # not a /tmp folder that a killed run would leave
        pipeline = build_pipeline(kubernetes=False)
        before = set(root.glob(f"{pipeline.name}-*")) if root.exists() else set()
        try:
            with ExitStack() as ctx:
                ctx.enter_context(redirect_stdout(tee))
                ctx.enter_context(warnings.catch_warnings())
                ctx.enter_context(program_only_python_rewrite())
                ctx.enter_context(reusing_finished_tasks(resumed.finished, on_reuse))
                # kfp.local warns per task that our image is "non-Python"; it is ours, built for this runner.
                warnings.filterwarnings("ignore", message=".*custom or non-Python base image", category=RuntimeWarning)
                pipeline(**args)
        except Exception:  # kfp.local raises RuntimeError naming the task; the stage's own error is in its output
            failed = [n for n, s in stages.items() if s.status in ("running", "failed")]
            for n in failed:
                stages[n].status = "failed"
            error = f"stage {failed[0] if failed else '?'} failed: {tee.stage_error()}"
        except KeyboardInterrupt:
            interrupted.setdefault("signum", signal.SIGINT)  # a KeyboardInterrupt not from our handler
            end_child_processes()
            running = [n for n, s in stages.items() if s.status == "running"]
            for n in running:
                stages[n].status = "interrupted"
            killed = kill_mlflow_runs(root, tracking_uri)
            error = (f"interrupted by {signal.Signals(interrupted['signum']).name} during stage "
                     f"{running[0] if running else '?'}" + (f"; MLflow run {', '.join(killed)} marked KILLED" if killed else ""))
        tee.drain()
        run_dirs = sorted(set(root.glob(f"{pipeline.name}-*")) - before)
        run_dir = run_dirs[-1] if run_dirs else None
        summary = collect(run_dir, out, attempt, stages, cfg, corpus, pairs, eval_beir, tracking_uri,
                          time.time() - started, error, profile_changes, interrupted=bool(interrupted), meta=meta)
    where = f"(log: {log_file}; summary: {out / 'summary.json'})"
    if interrupted:
        raise PipelineInterrupted(f"{error} {where}", interrupted["signum"])
    if error:
        raise PipelineFailed(f"{error} {where}")
    return summary



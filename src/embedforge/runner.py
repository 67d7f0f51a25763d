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
is lost. ``--resume`` finishes the latest interrupted/failed attempt in a new one (:mod:`embedforge.resume`);
stage temp files stay under the attempt and large outputs are hard links, not copies (:mod:`embedforge.disk`).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from embedforge.config import PipelineConfig
from embedforge.contracts import (
    Decision, EvaluationResult, PromotionRecord, RegistryRecord, has_manifest, read_manifest, write_json,
)
from embedforge.errors import EmbedforgeError, InputError, file_in_the_way, parse_stage_error
from embedforge.interrupts import end_child_processes, interruptible, kill_mlflow_runs
from embedforge.kfp_local import program_only_python_rewrite
from embedforge.report import REPORT_FILE, write_report
from embedforge.disk import link_tree
from embedforge.resume import Resumable, find_resumable, fingerprint, reusing_finished_tasks

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([\w-]+)'")
_END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
#: The last line of a Python traceback: only used when a stage died before printing its EMBEDFORGE-ERROR line.
_TRACEBACK_LAST = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Failed|Interrupt|Exit)): (.+)$")


class PipelineFailed(EmbedforgeError):
    """A stage failed; the message is the stage's own one-line error."""


class PipelineInterrupted(EmbedforgeError):
    """Ctrl-C or SIGTERM ended the run; ``exit_code`` is the shell's 128 + signal number (130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class StageState:
    status: str = "pending"
    started: float | None = None
    seconds: float | None = None


class _LogTee(io.TextIOBase):
    """Receives kfp.local's stdout: writes it to a log file and tracks stage starts/ends and error lines.

    ``error_lines`` holds the one-line errors the components printed (:func:`embedforge.errors.reported_stage_errors`);
    ``traceback_lines`` the last lines of tracebacks, the fallback for a stage that died before it could print one.
    """

    def __init__(self, log: Any, stages: dict[str, StageState], on_event: Callable[[str, str], None] | None = None):
        self.log = log
        self.stages = stages
        self.on_event = on_event
        self.error_lines: list[str] = []
        self.traceback_lines: list[str] = []
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.log.write(s)
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(s)

    def flush(self) -> None:
        self.log.flush()

    def _line(self, line: str) -> None:
        if m := _START.search(line):
            st = self.stages.setdefault(m.group(1), StageState())
            st.status, st.started = "running", time.time()
            self._emit(m.group(1), "running")
        elif m := _END.search(line):
            st = self.stages.setdefault(m.group(1), StageState())
            st.status = "succeeded" if m.group(2) == "SUCCESS" else "failed"
            if st.started is not None:
                st.seconds = round(time.time() - st.started, 2)
            self._emit(m.group(1), st.status)
        elif (message := parse_stage_error(line)) is not None:
            self.error_lines.append(message)
        elif m := _TRACEBACK_LAST.match(line):
            self.traceback_lines.append(f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}")

    def stage_error(self) -> str:
        """The failed stage's own one-line error (never kfp's "Pipeline ... finished with status FAILURE")."""
        if self.error_lines:
            return self.error_lines[-1]
        if self.traceback_lines:
            return self.traceback_lines[-1]
        return "it printed no error (killed?); its output is in the log"

    def _emit(self, stage: str, status: str) -> None:
        if self.on_event:
            self.on_event(stage, status)


def default_tracking_uri(out: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def check_out(out: Path) -> None:
    """``--out`` must be (or become) a folder: a regular file at it or above it is one line, not a traceback."""
    if (blocker := file_in_the_way(out)) is not None:
        raise InputError(f"--out {out}: {blocker} is a file, not a folder: choose another --out (or move the file)")


def new_attempt(out: Path) -> Path:
    """Create ``<out>/runs/<UTC time>-<n>/`` (n counts the attempts, so names sort and never collide)."""
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    n = len(list(runs.iterdir())) + 1
    while True:
        attempt = runs / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{n}"
        try:
            attempt.mkdir()
            return attempt
        except FileExistsError:
            n += 1


def point_latest(out: Path, attempt: Path) -> None:
    """Make ``<out>/latest`` a relative symlink to ``attempt`` (replaced atomically); ``latest.json`` if no symlinks."""
    link, tmp = out / "latest", out / ".latest.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(attempt.relative_to(out), target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # a filesystem without symlinks
        write_json(out / "latest.json", {"attempt": str(attempt)})


def write_summary(out: Path, attempt: Path, summary: dict[str, Any]) -> None:
    """The attempt's ``summary.json``, copied to ``<out>/summary.json`` (the newest attempt's)."""
    write_json(attempt / "summary.json", summary)
    shutil.copyfile(attempt / "summary.json", out / "summary.json")


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


def recover_registrations(out: Path, tracking_uri: str) -> list[str]:
    """Commit or clean up versions that killed register stages left in this run's MLflow store
    (:func:`embedforge.registry_recovery.recover`), knowing the records under ``out``. Only for a sqlite store
    that exists already (a remote store is recovered by the register stage itself, which has a timeout budget)."""
    from embedforge.registry import RUN_ID_FILE, client_for
    from embedforge.registry_recovery import recover

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

    ``resume``: reuse the finished stages of the latest interrupted/failed attempt (:mod:`embedforge.resume`)."""
    from kfp import local

    from embedforge.pipelines.pipeline import STAGES, build_pipeline, pipeline_arguments

    corpus, out = corpus.resolve(), out.resolve()
    pairs = pairs.resolve() if pairs else None
    eval_beir = eval_beir.resolve() if eval_beir else None
    check_inputs(corpus, pairs, eval_beir)
    check_out(out)
    if cfg.sdg.generator == "llm" and pairs is None:
        from embedforge.sdg.llm.preflight import preflight

        preflight(cfg.sdg.llm)  # a missing key or a stopped server fails in seconds, before ingest
    if cfg.sdg.generator == "llm" and not cfg.sdg.llm.work_dir:
        cfg.sdg.llm.work_dir = str(out / "sdg_work")  # resumable LLM results survive reruns into the same --out
    if not cfg.train.work_dir:
        cfg.train.work_dir = str(out / "train_work")  # finished probes survive a rerun (--resume) too
    import torch

    cfg, profile_changes = cfg.resolved(cuda_available=torch.cuda.is_available(), pairs_given=bool(pairs))
    tracking_uri = default_tracking_uri(out)
    args = pipeline_arguments(cfg, str(corpus), str(pairs or ""), str(eval_beir or ""), tracking_uri)
    meta: dict[str, Any] = {"fingerprint": fingerprint(args, [corpus, pairs, eval_beir]), "pid": os.getpid()}
    recovered = recover_registrations(out, tracking_uri)
    resumed = find_resumable(out, meta["fingerprint"], STAGES, tracking_uri) if resume else Resumable(out)
    if resume:
        meta["resumed_from"] = str(resumed.attempt)
    out.mkdir(parents=True, exist_ok=True)
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
        tee = _LogTee(log=log, stages=stages, on_event=on_event)
        target = _Both(tee, sys.__stdout__) if echo_logs else tee
        for line in recovered:
            print(line, file=log)

        def on_reuse(task: str, old: Path) -> None:
            print(f"Task '{task}' reused from {old} (finished there; not run again)", file=target)
            if task in stages:
                stages[task].status = "reused"
                tee._emit(task, "reused")

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
                   workspace_root=str(root / "workspace"))  # not a /tmp folder that a killed run would leave
        pipeline = build_pipeline(kubernetes=False)
        before = set(root.glob(f"{pipeline.name}-*")) if root.exists() else set()
        try:
            with ExitStack() as ctx:
                ctx.enter_context(redirect_stdout(target))
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


class _Both(io.TextIOBase):
    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def _artifact(run_dir: Path | None, stage: str, name: str) -> Path | None:
    if run_dir is None:
        return None
    p = run_dir / stage / name
    return p if p.exists() else None


def _copy_tree(src: Path | None, dst: Path) -> None:
    """``dst`` holds ``src``'s files as hard links: the attempt's model/, onnx/, triton/ take no extra space."""
    if src is None:
        return
    if dst.exists():
        shutil.rmtree(dst)
    link_tree(src, dst)


def collect(run_dir: Path | None, out: Path, attempt: Path, stages: dict[str, StageState], cfg: PipelineConfig,
            corpus: Path, pairs: Path | None, eval_beir: Path | None, tracking_uri: str, seconds: float,
            error: str | None, profile_changes: dict[str, Any] | None = None,
            interrupted: bool = False, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the main artifacts into the ``attempt`` folder and write its ``summary.json`` (copied to ``out``)."""
    from embedforge.pipelines.pipeline import STAGES

    art = {stage: _artifact(run_dir, stage, name) for stage, name in STAGES.items()}
    manifests = {stage: read_manifest(d) for stage, d in art.items() if d is not None and has_manifest(d)}
    for stage, st in stages.items():
        if st.status == "pending" and error is None and stage == "promote":
            st.status = "skipped"  # the gate said no
        if st.seconds is None and stage in manifests:
            st.seconds = manifests[stage].seconds

    _copy_tree(art["train"], attempt / "model")
    _copy_tree(art["export"], attempt / "onnx")
    _copy_tree(art["promote"], attempt / "triton")

    counts: dict[str, Any] = {}
    if "ingest" in manifests:
        c = manifests["ingest"].counts
        counts.update({"documents": c.get("documents"), "chunks": c.get("chunks"),
                       "train_documents": c.get("train_documents"), "eval_documents": c.get("eval_documents")})
    if "sdg" in manifests:
        c = manifests["sdg"].counts
        counts["pairs"] = {"train": c.get("train_pairs"), "eval": c.get("eval_pairs"), **{k: c[k] for k in ("pairs_file_rows", "duplicate_queries_merged", "augment_pairs") if k in c}}
    if "mine" in manifests:
        counts["train_examples"] = manifests["mine"].counts.get("examples")
    if "train" in manifests and "augment_rows" in manifests["train"].counts:  # sdg.augment rows the run trained on
        counts["augment_rows_trained"] = manifests["train"].counts["augment_rows"]

    summary: dict[str, Any] = {
        "status": "interrupted" if interrupted else "failed" if error else "succeeded",
        "error": error,
        "attempt": str(attempt),
        **(meta or {}),
        "seconds": round(seconds, 1),
        "inputs": {"corpus": str(corpus), "pairs": str(pairs) if pairs else None,
                   "eval_beir": str(eval_beir) if eval_beir else None, "base_model": cfg.base_model},
        "profile": {"name": cfg.profile, "changed": profile_changes or {}},
        "stages": {n: {"status": s.status, "seconds": s.seconds} for n, s in stages.items()},
        "counts": counts,
        "outputs": {"model": str(attempt / "model") if art["train"] else None,
                    "onnx": str(attempt / "onnx" / "model.onnx") if art["export"] else None,
                    "triton": str(attempt / "triton") if art["promote"] else None,
                    "kfp_run": str(run_dir) if run_dir else None},
    }
    if "sdg" in manifests and manifests["sdg"].result.generator_stats:
        summary["sdg"] = manifests["sdg"].result.generator_stats
    if "train" in manifests and manifests["train"].result.schedule is not None:  # what train.schedule chose, why
        summary["train_schedule"] = manifests["train"].result.schedule.model_dump(mode="json", exclude={"trials"})
    if "evaluate" in manifests:
        ev: EvaluationResult = manifests["evaluate"].result
        summary["evaluation"] = {"primary_metric": ev.primary_metric, "base": ev.base, "finetuned": ev.finetuned}
        if ev.external is not None:
            summary["evaluation"]["external"] = {"base": ev.external.base, "finetuned": ev.external.finetuned,
                                                 "path": ev.external.path}
    if "register" in manifests:
        reg: RegistryRecord = manifests["register"].result
        summary["registry"] = {"name": reg.model_name, "version": reg.version, "run_id": reg.run_id,
                               "tracking_uri": tracking_uri}
    if "gate" in manifests:
        dec: Decision = manifests["gate"].result
        summary["promotion"] = {"promoted": dec.promote and "promote" in manifests, "reason": dec.reason,
                                "decision": dec.model_dump(mode="json")}
        if "promote" in manifests:
            rec: PromotionRecord = manifests["promote"].result
            summary["promotion"].update(published_to=rec.published_to, rollout=rec.rollout)
    summary["outputs"]["report"] = str(write_report(art, attempt / REPORT_FILE, summary["status"], error))
    write_summary(out, attempt, summary)
    return summary

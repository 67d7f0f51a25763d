"""Resumable work folders: append-only JSONL, one fsynced line per finished unit of work.

Two users: the LLM pair generator (a unit = a document/bundle; one folder per split under ``sdg.llm.work_dir``)
and train's schedule search (a unit = one probe; one folder per search under ``train.work_dir``,
:mod:`embedforge.stages.train.probe_journal`). Folder layout::

    state.json       identity of the work (fingerprint of the settings + hash of the inputs; written once)
    plan.json        the units and their inputs, in processing order (the generator's)
    results.jsonl    one line per finished unit (status ok), never two for one unit
    failures.jsonl   one line per failed attempt of a unit (a log; a later run retries the unit)
    summary.json     counters of the latest run
    .lock            flock held while a run uses the folder

Crash safety: each record is serialised first and written with ONE ``os.write`` on an ``O_APPEND`` descriptor,
then fsynced, so a process killed with SIGKILL leaves either the whole line or none of it. A line torn by a
power loss (no trailing newline, not valid JSON) is cut off when the folder is opened again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from embedforge.contracts import read_json, write_json
from embedforge.errors import ConfigError, InputError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
PLAN_FILE = "plan.json"
RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"

Resume = Literal["always", "if_possible", "never"]


def _append_line(fd: int, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    view = memoryview(data)
    while view:  # a regular file takes the whole buffer in one write; the loop only guards short writes
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line is cut off (in the file too), a bad middle line raises."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    out: list[dict[str, Any]] = []
    offset = 0
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, start=1):
        is_last = n == len(lines)
        if not line.strip():
            offset += len(line) + 1
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if is_last:  # complete JSON but no newline: the fsync of the newline never happened
                raise ValueError("no trailing newline")
        except ValueError:
            if is_last or (n == len(lines) - 1 and not lines[-1]):
                log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(line))
                with path.open("r+b") as fh:
                    fh.truncate(offset)
                    fh.flush()
                    os.fsync(fh.fileno())
                break
            raise InputError(f"{path}:{n}: corrupt record; delete the work folder {path.parent} to start over") from None
        out.append(obj)
        offset += len(line) + 1
    return out


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_diff(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


class FolderBusy(ConfigError):
    """Another process holds the work folder's lock."""


class ResultStore:
    """One work folder. Use as a context manager: it takes an exclusive lock for the run.

    Args:
        folder: The folder (created).
        state: JSON-able identity of this run (fingerprint of settings + inputs hash); compared on resume.
        resume: ``always`` (resume; saved state of other settings is an error), ``if_possible`` (resume when the
            saved state matches, else set it aside and start over) or ``never`` (start over).
        setting: The config field that names the work folder, for messages (``sdg.llm.work_dir``).
        what: What the units are, for messages.
    """

    def __init__(self, folder: str | Path, state: dict[str, Any], resume: Resume = "if_possible",
                 setting: str = "sdg.llm.work_dir", what: str = "documents/bundles"):
        self.folder = Path(folder)
        self.state = state
        self.resume = resume
        self.setting = setting
        self.what = what
        self.completed: dict[str, dict[str, Any]] = {}
        self.resumed = 0
        self._fd_results: int | None = None
        self._fd_failures: int | None = None
        self._lock_fh: Any = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ResultStore:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fh = (self.folder / LOCK_FILE).open("a")
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise FolderBusy(f"another run is using the work folder {self.folder}; wait for it or set "
                             f"{self.setting} to another folder") from None
        try:
            self._open_state()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in (self._fd_results, self._fd_failures):
            if fd is not None:
                os.close(fd)
        self._fd_results = self._fd_failures = None
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _open_state(self) -> None:
        state_path = self.folder / STATE_FILE
        saved = read_json(state_path) if state_path.is_file() else None
        has_results = (self.folder / RESULTS_FILE).is_file() or (self.folder / PLAN_FILE).is_file()
        if saved is not None or has_results:
            if self.resume == "never":
                log.info("resume=never: discarding saved results in %s", self.folder)
                self._clear()
            elif saved != self.state:
                changed = _diff(saved or {}, self.state)
                if self.resume == "always":
                    raise ConfigError(
                        f"resume=always but the results in {self.folder} were made with other settings or "
                        f"inputs (differs: {', '.join(changed) or 'state'}); use resume=if_possible or never, or "
                        f"another {self.setting}")
                stale = self.folder.with_name(f"{self.folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
                log.warning("saved results in %s do not match this run (differs: %s); moving them to %s",
                            self.folder, ", ".join(changed) or "state", stale)
                self._set_aside(stale)
        write_json(state_path, self.state)
        for rec in _read_lines(self.folder / RESULTS_FILE):
            uid = rec.get("unit_id")
            if uid in self.completed:
                log.warning("%s: unit %s recorded twice; keeping the first", self.folder / RESULTS_FILE, uid)
                continue
            self.completed[uid] = rec
        _read_lines(self.folder / FAILURES_FILE)
        self.resumed = len(self.completed)
        if self.resumed:
            log.info("resuming: %d %s already done in %s", self.resumed, self.what, self.folder)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self._fd_results = os.open(self.folder / RESULTS_FILE, flags, 0o644)
        self._fd_failures = os.open(self.folder / FAILURES_FILE, flags, 0o644)

    def _clear(self) -> None:
        for name in (STATE_FILE, PLAN_FILE, RESULTS_FILE, FAILURES_FILE, SUMMARY_FILE):
            (self.folder / name).unlink(missing_ok=True)

    def _set_aside(self, stale: Path) -> None:
        stale.mkdir(parents=True, exist_ok=True)
        for name in (STATE_FILE, PLAN_FILE, RESULTS_FILE, FAILURES_FILE, SUMMARY_FILE):
            if (self.folder / name).exists():
                shutil.move(str(self.folder / name), stale / name)

    # --------------------------------------------------------------------------------------------- plan
    def load_plan(self) -> list[dict[str, Any]] | None:
        path = self.folder / PLAN_FILE
        return read_json(path)["units"] if path.is_file() else None

    def save_plan(self, units: list[dict[str, Any]]) -> None:
        write_json(self.folder / PLAN_FILE, {"units": units})

    # ------------------------------------------------------------------------------------------ records
    def add_result(self, record: dict[str, Any]) -> None:
        """Append a finished unit (fsynced) unless it is already recorded."""
        uid = record["unit_id"]
        if uid in self.completed:
            log.warning("unit %s already recorded; not writing it twice", uid)
            return
        assert self._fd_results is not None, "ResultStore used outside its context"
        _append_line(self._fd_results, record)
        self.completed[uid] = record

    def add_failure(self, record: dict[str, Any]) -> None:
        assert self._fd_failures is not None, "ResultStore used outside its context"
        _append_line(self._fd_failures, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.folder / SUMMARY_FILE, summary)

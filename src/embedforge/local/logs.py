"""What ``embedforge run`` reads from kfp.local's output: which stage runs, ends or fails, and each failure's line.

kfp.local prints "Executing task 'x'" and "Task 'x' finished with status S" around each task; the components print
their one-line error (:func:`embedforge.errors.reported_stage_errors`), and train its progress lines (step, loss,
ETA), passed on as events ``progress: step S/T, loss L, ETA E``. :class:`StageLog` writes everything to the
attempt's ``logs/pipeline.log`` and keeps the stages' states for the console and ``summary.json``.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from embedforge.errors import parse_stage_error
from embedforge.redact import redact

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([\w-]+)'")
_END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
#: The train step's progress line (:mod:`embedforge.stages.train.telemetry`): reported as ``progress: ...``.
_PROGRESS = re.compile(r"train: (step \d+/\d+) \(\d+ %\), (loss [-\d.naif]+), [\d.]+ samples/s, (ETA \S+)")
#: The last line of a Python traceback: only used when a stage died before printing its EMBEDFORGE-ERROR line.
_TRACEBACK_LAST = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Failed|Interrupt|Exit)): (.+)$")


@dataclass
class StageState:
    """One stage of a local run: pending, running, succeeded, failed, reused, skipped or interrupted."""

    status: str = "pending"
    started: float | None = None
    seconds: float | None = None


class StageLog(io.TextIOBase):
    """Receives kfp.local's stdout: writes it to a log file and tracks stage starts/ends and error lines.

    ``error_lines`` holds the one-line errors the components printed (:func:`embedforge.errors.reported_stage_errors`);
    ``traceback_lines`` the last lines of tracebacks, the fallback for a stage that died before it could print one.

    Output is written line by line, each line through :func:`~embedforge.redact.redact` — to the log and to
    ``echo`` (the console with ``-v``) — since kfp.local prints each task's executor input, which holds the
    tracking URI and the config, and libraries log URLs with their credentials. :meth:`drain` writes a last line
    that did not end.
    """

    def __init__(self, log: Any, stages: dict[str, StageState], on_event: Callable[[str, str], None] | None = None,
                 echo: Any = None):
        self.log = log
        self.echo = echo
        self.stages = stages
        self.on_event = on_event
        self.error_lines: list[str] = []
        self.traceback_lines: list[str] = []
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            line = redact(line)  # also what the console and the summary quote from it
            self._out(line + "\n")
            self._line(_ANSI.sub("", line))
        return len(s)

    def drain(self) -> None:
        """Write what is left of an unfinished last line."""
        if self._buf:
            self._out(redact(self._buf))
            self._buf = ""
        self.flush()

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def _out(self, text: str) -> None:
        self.log.write(text)
        if self.echo is not None:
            self.echo.write(text)

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
        elif m := _PROGRESS.search(line):
            self._emit("train", f"progress: {m.group(1)}, {m.group(2)}, {m.group(3)}")
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

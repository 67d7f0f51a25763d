"""Errors a user can act on, and how a stage's failure reaches the user as one line.

The CLI prints :class:`EmbedforgeError` as one line (no traceback); anything else is a bug. A KFP component runs
in its own process, so its exception cannot travel to ``embedforge run`` as an object: every component body runs
inside :func:`reported_stage_errors`, which prints the exception as one structured line
(``EMBEDFORGE-ERROR {"type": ..., "message": ...}``) before it propagates; the runner finds that line in the
stage's output with :func:`parse_stage_error`, whatever the exception class (ours, pydantic's, OSError ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LINE_BREAKS = re.compile(r"\s*[\r\n]\s*")

#: Prefix of the one structured line a failing component prints (see :func:`reported_stage_errors`).
STAGE_ERROR_MARK = "EMBEDFORGE-ERROR "


class EmbedforgeError(Exception):
    """Base class: the message names the file/field at fault and what to do."""


class ConfigError(EmbedforgeError):
    """Invalid configuration value or file."""


class InputError(EmbedforgeError):
    """Bad user input: missing/empty corpus, unreadable file, malformed pairs line, ..."""


class ValidationFailed(EmbedforgeError):
    """A data-quality expectation failed (see the saved validation result)."""


class ParityError(EmbedforgeError):
    """Exported model does not reproduce the PyTorch embeddings."""


class ServingError(EmbedforgeError):
    """The inference server did not load, or did not correctly serve, the promoted version."""


def one_line(exc: BaseException) -> str:
    """``Class: message`` with each line break (and the indentation around it) replaced by one space.

    A pydantic ``ValidationError`` becomes ``ValidationError: <model>: <field.path>: <msg>; ...`` instead of its
    multi-line text (which repeats the input and a documentation link per error).
    """
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        message = f"{exc.title}: " + "; ".join(parts)
    else:
        message = str(exc)
    return f"{type(exc).__name__}: {_LINE_BREAKS.sub(' ', message).strip() or '(no message)'}"


def file_in_the_way(path: str | Path) -> Path | None:
    """The regular file at ``path`` or at one of its parents, which stops ``path`` from being a folder."""
    p = Path(path)
    return next((a for a in (p, *p.parents) if a.exists() and not a.is_dir()), None)


def refuse_file_in_the_way(path: Path, option: str, folder: Path | None = None) -> None:
    """One line naming ``option`` when a regular file stands where ``folder`` (default: ``path`` itself) or one of
    its parents must be a folder: ``--out`` as a folder, ``--output``'s folder for a file.

    Raises:
        InputError: Such a file exists.
    """
    if (blocker := file_in_the_way(path if folder is None else folder)) is not None:
        raise InputError(f"{option} {path}: {blocker} is a file, not a folder: choose another {option} (or move "
                         "the file)")


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error a user can fix: the path, what is wrong with it, and what to do."""
    if exc.filename is None:
        return one_line(exc)
    path = exc.filename
    if isinstance(exc, (NotADirectoryError, FileExistsError)) and (blocker := file_in_the_way(path)) is not None:
        return f"{path}: {blocker} is a file, not a folder: choose another path (or move the file)"
    return f"{path}: {exc.strerror or exc}"


@contextmanager
def reported_stage_errors() -> Iterator[None]:
    """Wraps a component body: an exception is printed as one ``EMBEDFORGE-ERROR {json}`` line, then re-raised
    (so KFP still marks the task failed and the traceback stays in the log). The body logs at
    ``$EMBEDFORGE_LOG_LEVEL`` when set (``embedforge --log-level``)."""
    import logging
    import os

    if (level := os.environ.get("EMBEDFORGE_LOG_LEVEL", "").upper()) in ("DEBUG", "INFO", "WARNING", "ERROR"):
        logging.getLogger().setLevel(level)
    try:
        yield
    except Exception as exc:
        print(STAGE_ERROR_MARK + json.dumps({"type": type(exc).__name__, "message": one_line(exc)}), flush=True)
        raise


def parse_stage_error(line: str) -> str | None:
    """The ``Class: message`` of a line printed by :func:`reported_stage_errors`; None for any other line."""
    _, mark, payload = line.partition(STAGE_ERROR_MARK)
    if not mark:
        return None
    try:
        message = json.loads(payload)["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


class MlflowStoreError(ConfigError):
    """A local MLflow store (a sqlite file) cannot be used: not a database, damaged, of a schema this MLflow does
    not know, or held by another process for too long. The message names the file and what to do."""


class OutputBusy(InputError):
    """Another ``embedforge run`` holds the output folder (its advisory lock)."""

"""Run kfp.local's subprocess runner without it rewriting our arguments.

``kfp.local.SubprocessRunner`` makes a component run on this machine's interpreter by replacing the string
``python3`` with ``sys.executable`` in *every* element of the component's command
(``kfp.local.subprocess_task_handler.replace_python_executable``, kfp 2.17.3) — the executor-input JSON that
follows the program included. That JSON carries every parameter and artifact path of the task, so any path
containing ``python3`` is corrupted before the stage sees it: the bundled sample corpus inside a venv
(``.../lib/python3.11/site-packages/...``), a ``--corpus ~/python3-notes``, an ``--out`` below such a folder, and
the KFP pipeline root under it. The interpreter path is also pasted unquoted into the ``sh -c`` program, so an
interpreter below a folder with a space breaks the program.

:func:`program_only_python_rewrite` swaps that function, for the duration of a local run, for one that rewrites
only the program (the ``sh -c`` script that starts ``python3 -m kfp.dsl.executor_main``), as a whole word and
shell-quoted, and passes the user code and every argument after it through untouched.

Upstream reproduction (kfp 2.17.3)::

    from kfp.local.subprocess_task_handler import replace_python_executable
    cmd = ["sh", "-c", 'python3 -m kfp.dsl.executor_main --component_module_path '
           '"$program_path/ephemeral_component.py" "$@"', "def f(): ...", "--executor_input",
           '{"inputs": {"parameterValues": {"corpus": "/home/me/python3-notes"}}}']
    replace_python_executable(cmd, "/usr/bin/python3.11")[-1]
    # -> '{"inputs": {"parameterValues": {"corpus": "/home/me//usr/bin/python3.11-notes"}}}'
"""

from __future__ import annotations

import re
import shlex
from contextlib import contextmanager
from typing import Iterator

_PYTHON3 = re.compile(r"(?<![\w./-])python3(?![\w./-])")
_PROGRAM_MARK = '"$program_path/ephemeral_component.py"'


def rewrite_program_only(full_command: list[str], new_executable: str) -> list[str]:
    """``full_command`` with the ``python3`` word of the program (up to and including the element that runs the
    ephemeral component) replaced by the quoted ``new_executable``; user code and arguments unchanged."""
    quoted = shlex.quote(new_executable)
    out: list[str] = []
    in_program = True
    for el in full_command:
        if in_program:
            out.append(_PYTHON3.sub(lambda _m: quoted, el))
            in_program = not (_PROGRAM_MARK in el and '"$@"' in el)
        else:
            out.append(el)
    return out


@contextmanager
def program_only_python_rewrite() -> Iterator[None]:
    """While active, kfp.local's subprocess runner rewrites only the program, never the task's arguments."""
    from kfp.local import subprocess_task_handler as handler

    original = getattr(handler, "replace_python_executable", None)
    if original is None:  # kfp changed how it picks the interpreter; tests/install/test_fresh_install.py catches a regression
        yield
        return
    handler.replace_python_executable = rewrite_program_only
    try:
        yield
    finally:
        handler.replace_python_executable = original

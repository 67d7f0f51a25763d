"""The command line's own faults: an output folder a file stands in the way of, and hints that name flags.

* every stage subcommand checks its ``--out`` before the stage's work: a file where the folder (or one above it)
  must be is one line naming ``--out`` — ``embedforge train`` does not train for minutes first;
* every ``--flag`` an error message tells the user to pass exists: on the command that raises it (rollback, run,
  submit, the command functions in cli.py), else on some command.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embedforge.cli import app

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "embedforge"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: Modules whose errors only one command raises: their hints must name that command's flags.
COMMAND_OF = {"serving/rollback.py": "rollback", "local/": "run", "cluster/submit.py": "submit"}
#: Flags of other programs a hint may name (none yet; e.g. a kubectl or torchrun flag would go here).
OTHER_PROGRAMS: set[str] = set()


def _options() -> dict[str, set[str]]:
    """Each command's option names (``--set``, ``-s`` ...)."""
    import typer

    def opts(cmd) -> set[str]:
        return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}

    group = typer.main.get_command(app)
    out: dict[str, set[str]] = {}
    for name, cmd in group.commands.items():  # sub-groups (`config`) by "group command"; the global options too
        for sub_name, sub in getattr(cmd, "commands", {name: cmd}).items():
            out[name if sub is cmd else f"{name} {sub_name}"] = opts(sub) | opts(group)
    return out


def _hints() -> list[tuple[str, int, str, str | None]]:
    """(module, line, flag, command or None) for each ``--flag`` in a raised error's or ``_fail``'s message."""
    found = []
    commands = {f.__name__: c.name or f.__name__ for c in app.registered_commands if (f := c.callback)}
    commands |= {f.__name__: f"{g.name} {c.name or f.__name__}" for g in app.registered_groups
                 for c in g.typer_instance.registered_commands if (f := c.callback)}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        owner = next((cmd for prefix, cmd in COMMAND_OF.items() if rel.startswith(prefix)), None)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                messages = node.exc.args
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_fail":
                messages = node.args
            else:
                continue
            command = owner
            if rel == "cli.py":  # the command function the message is raised in
                around = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
                command = next((commands[f.name] for f in around if f.name in commands), None)
            for message in messages:
                for const in ast.walk(message):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        found += [(rel, node.lineno, flag, command) for flag in FLAG.findall(const.value)]
    return found


def test_every_flag_a_hint_names_exists():
    options = _options()
    every = set().union(*options.values())
    hints = _hints()
    assert any(cmd == "rollback" for *_, cmd in hints), "the rollback hints were not found"
    missing = [f"{module}:{line}: {flag} (not an option of {command or 'any command'})"
               for module, line, flag, command in hints
               if flag not in OTHER_PROGRAMS and flag not in (options[command] if command else every)]
    assert not missing, "error hints name flags that do not exist:\n" + "\n".join(missing)


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "300"}
    env.pop("EMBEDFORGE_DEBUG", None)
    return env


@pytest.mark.parametrize("stage", ["ingest", "train"])
def test_a_stage_out_under_a_file_fails_before_the_stage_works(tmp_path, stage, tiny_corpus, mined_dir):
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "x"
    args = {"ingest": ["--corpus", str(tiny_corpus)], "train": ["--mined", str(mined_dir), "--set", "train.epochs=1"]}
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", stage, *args[stage], "--out", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=600, check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"--out {out}: {tmp_path / 'afile'} is a file, not a folder: choose another --out" in errors[0], errors[0]
    assert "train:" not in r.stderr and "step" not in r.stderr  # nothing was trained first

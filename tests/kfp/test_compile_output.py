"""``embedforge compile --output``: a path that cannot take the YAML (a file where a folder must be, a folder, another
suffix) is one ``error:`` line naming ``--output``, not a traceback; a new folder is made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _compile(cwd: Path, output: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300"}
    env.pop("EMBEDFORGE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "embedforge.cli", "compile", "--local", "--output", output],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.parametrize("output, says", [
    ("afile/x.yaml", "--output afile/x.yaml: afile is a file, not a folder: choose another --output"),
    ("afile/deeper/x.yaml", "--output afile/deeper/x.yaml: afile is a file, not a folder"),
    ("adir.yaml", "--output adir.yaml is a folder"),
    ("adir", "--output adir: must end with .yaml"),
])
def test_an_output_that_cannot_take_the_yaml_is_one_line(tmp_path, output, says):
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir.yaml").mkdir()
    (tmp_path / "adir").mkdir()
    r = _compile(tmp_path, output)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert says in errors[0], errors[0]
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


def test_a_new_folder_for_the_output_is_made(tmp_path):
    r = _compile(tmp_path, "new/sub/pipeline.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "new" / "sub" / "pipeline.yaml").read_text().strip()

"""The command line's global options and ``config show``: the real ``embedforge`` entry point, in a subprocess
where logging is concerned (it is process-wide) and through typer's runner otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from embedforge import __version__
from embedforge.cli import app
from embedforge.config import PipelineConfig, load_config


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EMBEDFORGE_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "embedforge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"embedforge {__version__}"


def test_log_level_sets_what_a_stage_logs(tmp_path, tiny_corpus, base_model):
    args = ["ingest", "--corpus", str(tiny_corpus), "--base-model", base_model]
    default = _cli(*args, "--out", str(tmp_path / "a"))
    assert default.returncode == 0, default.stderr
    assert "INFO embedforge.stages.ingest: ingest:" in default.stderr
    quiet = _cli("--log-level", "warning", *args, "--out", str(tmp_path / "b"))
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO " not in quiet.stderr and (tmp_path / "b" / "manifest.json").is_file()
    bad = _cli("--log-level", "loud", "config", "show", "--defaults")
    assert bad.returncode in (1, 2) and "--log-level 'loud'" in bad.stderr and "Traceback" not in bad.stderr


def test_config_show_prints_the_resolved_config_with_descriptions(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  epochs: 3\nprompts:\n  query: 'query: '\n")
    r = CliRunner().invoke(app, ["config", "show", "--config", str(cfg_file), "--set", "train.batch_size=24",
                                 "evaluate.k_values=[1,10]"])
    assert r.exit_code == 0, r.output
    expected = load_config(cfg_file, ["train.batch_size=24", "evaluate.k_values=[1,10]"])
    assert yaml.safe_load(r.stdout) == expected.to_dict()  # exactly what `run` would get, as a config file
    shown = tmp_path / "shown.yaml"
    shown.write_text(r.stdout)
    assert load_config(shown) == expected  # ... that reads back to the same config, comments and all
    lines = r.stdout.splitlines()
    epochs = lines.index("  epochs: 3.0")
    description = PipelineConfig.model_fields["train"].annotation.model_fields["epochs"].description
    assert lines[epochs - 1].startswith("  # ") and description.split()[-1] in lines[epochs - 1]
    assert "prompts:" in lines and "  query: 'query: '" in lines  # the trailing space survives


def test_config_show_defaults():
    r = CliRunner().invoke(app, ["config", "show", "--defaults"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout) == PipelineConfig().to_dict()
    r = CliRunner().invoke(app, ["config", "show", "--defaults", "--profile-for", "cpu"])
    cpu, changed = PipelineConfig().resolved(cuda_available=False)
    assert r.exit_code == 0 and changed and yaml.safe_load(r.stdout) == cpu.to_dict()
    r = CliRunner().invoke(app, ["config", "show", "--defaults", "--set", "train.epochs=2"])
    assert r.exit_code == 1 and "--defaults" in r.output


@pytest.mark.parametrize("bad, words", [("train.epochs=many", "train.epochs"), ("train.nope=1", "train.nope")])
def test_config_show_refuses_a_bad_override_in_one_line(bad, words):
    r = CliRunner().invoke(app, ["config", "show", "--set", bad])
    assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output

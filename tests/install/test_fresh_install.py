"""`embedforge run` as a user runs it: the console script of a non-editable install in a venv, paths of any shape.

kfp.local's subprocess runner rewrites the string ``python3`` inside every argument of a task (see
``embedforge.local.kfp_local``), which broke the README's first command: the bundled sample corpus lies below
``lib/python3.11/site-packages`` of any venv. These tests install embedforge non-editable into a venv whose own path
contains ``python3``, a space and non-ASCII characters, and run the real pipeline from it: once on the default
sample corpus, once with ``--corpus``, ``--pairs``, ``--eval-beir`` and ``--out`` below such folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from embedforge.local.kfp_local import rewrite_program_only

REPO = Path(__file__).resolve().parents[2]
ODD = "python3 ünï côdé"  # the word kfp.local rewrites, a space, non-ASCII
FAST = ["train.epochs=1", "train.batch_size=16", "evaluate.k_values=[1,5,10]", "export.parity_samples=16",
        "validate.min_train_pairs=5", "validate.min_eval_pairs=2"]


def _kfp_command(arg: str) -> list[str]:
    """Our ingest component's command as kfp compiles it, carrying ``arg`` in its executor input."""
    from embedforge.components.ingest.component import ingest

    spec = ingest.pipeline_spec.deployment_spec["executors"]["exec-ingest"]["container"]
    executor_input = json.dumps({"inputs": {"parameterValues": {"corpus_path": arg}}})
    return [*spec["command"], *[a.replace("{{$}}", executor_input) for a in spec["args"]]]


# ------------------------------------------------------------------------------- the rewrite, in isolation
def test_upstream_kfp_still_rewrites_python3_inside_arguments():
    """Documents the upstream bug our patch exists for; when kfp fixes it this fails: drop embedforge.local.kfp_local."""
    from kfp.local.subprocess_task_handler import replace_python_executable

    cmd = _kfp_command("/home/me/python3-notes")
    assert '"/home/me//usr/bin/x-notes"' in " ".join(replace_python_executable(cmd, "/usr/bin/x"))


def test_our_rewrite_changes_only_the_program_and_quotes_the_interpreter():
    cmd = _kfp_command(f"/home/me/{ODD}/corpus")
    new = rewrite_program_only(cmd, "/opt/my venv/bin/python")
    changed = [(a, b) for a, b in zip(cmd, new) if a != b]
    assert len(changed) == 1, "only the sh -c program may change"
    assert "'/opt/my venv/bin/python' -m kfp.dsl.executor_main" in changed[0][1]
    assert json.loads(new[new.index("--executor_input") + 1])["inputs"]["parameterValues"]["corpus_path"] == f"/home/me/{ODD}/corpus"


# ------------------------------------------------------------------------------- a real non-editable install
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv below an odd path with embedforge installed non-editable (its dependencies are this interpreter's,
    through a .pth file, so nothing is downloaded); returns the venv's ``embedforge`` console script."""
    venv = tmp_path_factory.mktemp("venv") / ODD / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_embedforge_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(wheels), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    # --force-reinstall: this interpreter's own embedforge is visible through the .pth, and pip would call it satisfied
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall",
                        *map(str, wheels.glob("embedforge-*.whl"))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import embedforge.sample_corpus as s; print(s.SAMPLE_CORPUS)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    assert where.startswith(str(venv)) and "site-packages" in where, f"not the installed copy: {where}"
    return venv / "bin" / "embedforge"


def _run(cli: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(cli), "run", *args], capture_output=True, text=True, env=env, cwd="/", timeout=1500)


def test_installed_cli_runs_the_bundled_sample_corpus(installed, tmp_path):
    out = tmp_path / ODD / "demo"
    r = _run(installed, "--out", str(out), *FAST, "sdg.max_pairs=200")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded"
    assert s["inputs"]["corpus"].startswith(str(installed.parent.parent)) and "python3." in s["inputs"]["corpus"]
    assert s["counts"]["documents"] > 50
    assert (out / "latest" / "onnx" / "model.onnx").is_file() and (out / "latest" / "model" / "config.json").is_file()
    assert "summary: " in r.stdout + r.stderr  # the console summary was printed


def test_paths_with_python3_spaces_and_non_ascii_survive(installed, tmp_path, tiny_corpus):
    import shutil

    base = tmp_path / f"{ODD} inputs"
    corpus = base / "my python3 docs"
    shutil.copytree(tiny_corpus, corpus)
    docs = sorted(p.name for p in corpus.glob("*.rst"))
    pairs = base / "pairs ü.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"what does the {Path(d).stem} statement do in python3",
                                         "positive_ids": [d]}) + "\n" for d in docs), encoding="utf-8")
    beir = base / "beir python3 é"
    (beir / "qrels").mkdir(parents=True)
    with (beir / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"_id": d, "title": Path(d).stem, "text": (corpus / d).read_text()[:2000]}) + "\n")
    (beir / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": f"how is {Path(d).stem} used"}) + "\n" for i, d in enumerate(docs)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\t{d}\t1\n" for i, d in enumerate(docs)))
    out = base / "out python3 ✓"

    r = _run(installed, "--corpus", str(corpus), "--pairs", str(pairs), "--eval-beir", str(beir), "--out", str(out),
             *FAST)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded"
    assert s["inputs"] == {**s["inputs"], "corpus": str(corpus), "pairs": str(pairs), "eval_beir": str(beir)}
    assert s["counts"]["documents"] == len(docs)
    assert s["counts"]["pairs"]["train"] + s["counts"]["pairs"]["eval"] == len(docs)
    assert s["evaluation"]["external"]["path"] == str(beir)
    assert s["registry"]["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}" and (out / "mlflow.db").is_file()
    assert Path(s["outputs"]["kfp_run"]).is_relative_to(out)
    assert (out / "latest" / "onnx" / "model.onnx").is_file()

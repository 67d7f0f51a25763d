"""Bad input through the command line, as a user meets it: each fault ends the command with exit code 1 and ONE
line naming the file/line/field and what to do — never a traceback, never a late failure, never a secret printed.

* config: names that become paths or registry names (``triton.model_name=..``, ``register.model_name=../../x y``),
  absurd numbers (``train.batch_size=1e18``), a ``--config`` file that is not UTF-8 — all before the first stage;
* corpus and pairs files that are not UTF-8 (``embedforge ingest``, and ``embedforge run`` whose ingest stage
  fails), symbolic links out of the corpus folder, queries made of Unicode blanks;
* an LLM endpoint whose model list is not JSON or is malformed, one that answers nothing (the run stops after
  ``sdg.llm.max_consecutive_failures`` documents), one that echoes the API key back in its 401.

The commands run for real: ``embedforge`` subprocesses where the whole pipeline starts (``run``), typer's
CliRunner for the single-stage subcommands; files are written byte for byte and the LLM endpoints are real HTTP
servers on 127.0.0.1 (tests/support/llm_servers.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from llm_servers import FaultServer
from typer.testing import CliRunner

from embedforge.contracts import read_chunks, write_jsonl

LATIN1 = "caf\u00e9".encode("latin-1")
SECRET = "nvapi-NEVER-PRINT-THIS-0123456789"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "NVIDIA_API_KEY": "",
         "OPENAI_API_KEY": "", **(env or {})}
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "embedforge.cli", *args], capture_output=True, text=True, env=e,
                          timeout=900, check=False)


def _invoke(*args: str):
    from embedforge.cli import app

    return CliRunner().invoke(app, list(args))


def _error_line(output: str) -> str:
    """The one ``error:`` line of a failed command (and that there is exactly one, and no traceback)."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("setting, says", [
    ("triton.model_name=..", "error: invalid configuration: triton.model_name: '..' is not a Triton model name"),
    ("triton.model_name=../../../srv", "triton.model_name: '../../../srv' is not a Triton model name"),
    ("register.model_name=../../x y", "register.model_name: '../../x y' is not a registered model name"),
    ("gate.alias=latest", "gate.alias: 'latest' is reserved by MLflow"),
    ("train.batch_size=1.0e+18", "train.batch_size: Input should be less than or equal to 65536"),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0"),
    ("evaluate.primary_metric=ndcg@3", "evaluate.primary_metric uses k=3, which evaluate.k_values/extra_k do not compute"),
])
def test_bad_settings_fail_before_the_first_stage(tmp_path, setting, says):
    out = tmp_path / "run"
    res = _invoke("run", "--out", str(out), "--set", setting)
    assert res.exit_code == 1
    assert says in _error_line(res.output)
    assert not out.exists()  # nothing started: no attempt, no MLflow store


def test_config_file_that_is_not_utf8_is_one_line(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_bytes(b"train:\n  epochs: 1\nprompts:\n  query: '" + LATIN1 + b": '\n")
    for command in (["run", "--out", str(tmp_path / "run")], ["ingest", "--corpus", str(tmp_path), "--out", str(tmp_path / "c")]):
        res = _invoke(*command, "--config", str(config))
        assert res.exit_code == 1
        assert _error_line(res.output) == (f"error: config file {config}:4: not UTF-8 text (byte 0xe9 at column 14): "
                                           "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


# ------------------------------------------------------------------------------------------------- corpus
@pytest.fixture
def latin1_corpus(tmp_path) -> Path:
    path = tmp_path / "beir" / "corpus.jsonl"
    path.parent.mkdir()
    rows = [{"_id": f"d{i}", "title": f"Topic {i}", "text": f"Document {i} explains topic {i} in a few words. " * 4}
            for i in range(6)]
    lines = [json.dumps(r).encode() for r in rows]
    lines[2] = b'{"_id": "d2", "title": "", "text": "' + LATIN1 + b' au lait is coffee with milk."}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_ingest_of_a_corpus_that_is_not_utf8_is_one_line(tmp_path, latin1_corpus):
    res = _invoke("ingest", "--corpus", str(latin1_corpus), "--out", str(tmp_path / "chunks"))
    assert res.exit_code == 1
    assert _error_line(res.output) == (
        f"error: {latin1_corpus}:3: not UTF-8 text (byte 0xe9 at column 40): re-encode the file as UTF-8 (e.g. "
        "iconv -f latin1 -t utf-8 corpus.jsonl > fixed.corpus.jsonl)")


def test_run_names_the_file_and_line_when_the_corpus_is_not_utf8(tmp_path, latin1_corpus):
    """``embedforge run`` reports the ingest stage's own line: file, line, byte and the fix — not
    ``UnicodeDecodeError ... position 34``."""
    out = tmp_path / "run"
    r = _cli("run", "--corpus", str(latin1_corpus), "--out", str(out))
    assert r.returncode == 1
    line = _error_line(r.stderr)
    assert line.startswith(f"error: stage ingest failed: InputError: {latin1_corpus}:3: not UTF-8 text (byte 0xe9 "
                           "at column 40): re-encode the file as UTF-8"), line
    assert "UnicodeDecodeError" not in r.stderr
    assert json.loads((out / "summary.json").read_text())["stages"]["ingest"]["status"] == "failed"


def test_pairs_file_that_is_not_utf8_is_one_line(tmp_path, chunks_dir):
    doc = read_chunks(chunks_dir)[0].doc_id
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"query": "' + LATIN1 + b' menu", "positive_ids": ["' + doc.encode() + b'"]}\n')
    res = _invoke("sdg", "--chunks", str(chunks_dir), "--pairs", str(pairs), "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert _error_line(res.output).startswith(f"error: {pairs}:1: not UTF-8 text (byte 0xe9 at column 15)")


def test_symlinked_file_outside_the_corpus_is_skipped_and_counted(tmp_path):
    secret = tmp_path / "home" / ".ssh_notes.txt"
    secret.parent.mkdir()
    secret.write_text("My private notes. They must never become training data.\n")
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "guide.txt").write_text("The guide explains the widget. It has three parts and a handle.\n")
    (corpus / "notes.txt").symlink_to(secret)
    res = _invoke("ingest", "--corpus", str(corpus), "--out", str(tmp_path / "chunks"))
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert result["counts"]["external_symlinks_skipped"] == 1 and result["counts"]["documents"] == 1
    assert "private notes" not in (tmp_path / "chunks" / "chunks.jsonl").read_text()


def test_queries_of_unicode_blanks_are_refused_like_empty_ones(tmp_path, chunks_dir):
    chunks = read_chunks(chunks_dir)
    docs = sorted({c.doc_id for c in chunks if c.split == "train"})
    rows = [{"query": f"what is explained in {d}", "positive_ids": [d]} for d in docs]
    rows += [{"query_id": "nbsp", "query": "\u00a0\u00a0\u00a0", "positive_ids": [docs[0]]},
             {"query_id": "zwsp", "query": "\u200b\u200b\u200b", "positive_ids": [docs[0]]},
             {"query_id": "bom", "query": "\ufeff\u2003\ufeff", "positive_ids": [docs[0]]}]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    res = _invoke("sdg", "--chunks", str(chunks_dir), "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "p"))
    assert res.exit_code == 0, res.output
    res = _invoke("validate", "--chunks", str(chunks_dir), "--pairs", str(tmp_path / "p"), "--out", str(tmp_path / "v"),
                  "--set", "validate.min_eval_pairs=0")
    assert res.exit_code == 1
    line = _error_line(res.output)
    assert line.startswith("error: pairs failed 1 of ") and "query_not_blank (3 row(s), e.g. nbsp: '\\xa0\\xa0\\xa0'" in line


# ----------------------------------------------------------------------------------------------- LLM endpoint
@pytest.mark.parametrize("body, says", [
    (b"<!doctype html><title>Login</title>", ("answered GET /models with a body that is not JSON (it begins "
                                              "'<!doctype html><title>Login</title>')")),
    (b'{"data":[{"id":123},"x",null]}', 'answered GET /models with a malformed model list (entry 0 has "id" 123'),
])
def test_run_with_a_broken_model_list_is_one_line_before_any_stage(tmp_path, body, says):
    out = tmp_path / "run"
    with FaultServer(models_body=body) as srv:
        r = _cli("run", "--out", str(out), "--set", "sdg.generator=llm", "--set", f"sdg.llm.base_url={srv.base_url}",
                 "--set", "sdg.llm.model=fault-model")
    assert r.returncode == 1
    line = _error_line(r.stderr)
    assert line.startswith(f"error: sdg.llm.base_url {srv.base_url} ") and says in line, line
    assert not (out / "runs").exists()  # the pre-flight runs before ingest


def test_run_never_prints_the_key_an_endpoint_echoes(tmp_path):
    with FaultServer(require_key="the-right-one-000000", echo_auth=True) as srv:
        r = _cli("run", "--out", str(tmp_path / "run"), "--set", "sdg.generator=llm",
                 "--set", f"sdg.llm.base_url={srv.base_url}", "--set", "sdg.llm.model=fault-model",
                 env={"NVIDIA_API_KEY": SECRET})
    assert r.returncode == 1
    line = _error_line(r.stderr)
    assert line.startswith(f"error: sdg.llm.base_url {srv.base_url} refused the key in $NVIDIA_API_KEY: fix it")
    assert "Bearer ***" in line and SECRET not in r.stderr + r.stdout


def test_a_dead_endpoint_stops_the_stage_with_one_line(tmp_path, chunks_dir):
    with FaultServer(stage_faults={"artifacts": "500"}) as srv:
        res = _invoke("sdg", "--chunks", str(chunks_dir), "--out", str(tmp_path / "pairs"),
                      "--set", "sdg.generator=llm", "--set", f"sdg.llm.base_url={srv.base_url}",
                      "--set", "sdg.llm.model=fault-model", "--set", f"sdg.llm.work_dir={tmp_path / 'work'}",
                      "--set", "sdg.llm.max_retries=0", "--set", "sdg.llm.max_concurrency=1",
                      "--set", "sdg.llm.max_consecutive_failures=2")
        sent = len(srv.log)
    assert res.exit_code == 1
    line = _error_line(res.output)
    assert line.startswith(f"error: sdg.llm: 2 documents/bundles in a row got no usable reply from sdg.llm.base_url "
                           f"{srv.base_url} (last error, at artifacts: ")
    assert sent == 2


def test_run_keeps_url_credentials_out_of_every_file_it_writes(tmp_path, tiny_corpus):
    """A password in ``sdg.llm.base_url`` reaches the endpoint (the stages read the URL from the environment) but
    no file under ``--out``: not the stage logs kfp.local writes, not the manifests, not the summary."""
    password = "pw-NEVER-WRITE-0123456789"
    out = tmp_path / "run"
    with FaultServer(stage_faults={"artifacts": "500"}) as srv:
        url = srv.base_url.replace("127.0.0.1", f"bob:{password}@127.0.0.1")
        r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(out), "--set", "sdg.generator=llm",
                 "--set", f"sdg.llm.base_url={url}", "--set", "sdg.llm.model=fault-model",
                 "--set", "sdg.llm.max_retries=0", "--set", "sdg.llm.max_concurrency=1",
                 "--set", "sdg.llm.max_consecutive_failures=1")
        reached = list(srv.log)
    assert r.returncode == 1 and "sdg" in _error_line(r.stderr), r.stderr[-2000:]
    assert reached, "the stage sent its request to the real URL"
    assert password not in r.stdout + r.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".log") for p in written)
    leaked = [str(p) for p in written if password.encode() in p.read_bytes()]
    assert not leaked, leaked

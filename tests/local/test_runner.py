"""A stage's failure reaches the user as the stage's own one line, whatever the exception class.

Each component runs for real through ``component.python_func`` with real kfp artifact objects and fails for a real
reason; its printed output goes through the runner's own log parser (``StageLog``), exactly as kfp.local's output
does in ``embedforge run``. tests/kfp/test_pipeline.py drives a failing stage through ``embedforge run`` itself.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from kfp import dsl
from llm_servers import FaultServer  # noqa: E402

from embedforge.contracts import PAIRS_FILE, Pair, read_chunks, write_jsonl
from embedforge.errors import (
    ConfigError,
    InputError,
    ParityError,
    ServingError,
    ValidationFailed,
    one_line,
    reported_stage_errors,
)
from embedforge.local.logs import StageLog, StageState

KFP_BOILERPLATE = ("Pipeline 'embedforge'", "Inner task failed", "Traceback", "\x1b[")


def _parsed(output: str) -> str:
    """The error line the runner extracts from a stage's output (as kfp.local prints it)."""
    tee = StageLog(log=io.StringIO(), stages={"stage": StageState()})
    tee.write(output)
    return tee.stage_error()


def _fail(capsys, fn, **kwargs) -> tuple[BaseException, str]:
    """Run a component's python_func that must fail; return its exception and the runner's one line for it."""
    with pytest.raises(Exception) as info:
        fn(**kwargs)
    return info.value, _parsed(capsys.readouterr().out)


def _assert_one_line(exc: BaseException, line: str, cls: type, *words: str) -> None:
    assert isinstance(exc, cls)
    assert line.startswith(f"{type(exc).__name__}: "), line
    assert "\n" not in line and not any(b in line for b in KFP_BOILERPLATE), line
    for w in words:
        assert w in line, (w, line)


def test_ingest_errors_input_config_and_os(capsys, tmp_path, base_model):
    from embedforge.components.ingest.component import ingest

    def run(corpus: Path, config: dict, out: Path):
        return _fail(capsys, ingest.python_func, corpus_path=str(corpus), base_model=base_model, config=config,
                     chunks=dsl.Dataset(uri=str(out)), metrics=dsl.Metrics(uri=str(tmp_path / "m")),
                     tracking_uri="sqlite:///unused.db")

    exc, line = run(tmp_path / "no-such-corpus", {}, tmp_path / "c1")
    _assert_one_line(exc, line, InputError, "InputError", "no-such-corpus")

    # pydantic's multi-line ValidationError becomes one line naming the model and the field
    exc, line = run(tmp_path, {"sentences_per_chunk": 0, "no_such_field": 1}, tmp_path / "c2")
    _assert_one_line(exc, line, Exception, "ValidationError: IngestConfig", "sentences_per_chunk:", "no_such_field:")
    assert type(exc).__name__ == "ValidationError"

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("A short document. " * 20)
    (tmp_path / "afile").write_text("not a folder")
    exc, line = run(docs, {}, tmp_path / "afile" / "chunks")  # output folder under a regular file
    _assert_one_line(exc, line, OSError, "afile")


def test_validate_failure_is_one_line(capsys, tmp_path, chunks_dir, pairs_dir):
    from embedforge.components.validate.component import validate as component

    train = next(c for c in read_chunks(chunks_dir) if c.split == "train")
    bad = tmp_path / "pairs"
    bad.mkdir()
    rows = [Pair(query_id=f"q{i}", query="", positive_chunk_ids=[train.chunk_id], split="train") for i in range(3)]
    write_jsonl(bad / PAIRS_FILE, rows)
    exc, line = _fail(capsys, component.python_func, chunks=dsl.Dataset(uri=str(chunks_dir)),
                      pairs=dsl.Dataset(uri=str(bad)), config={}, validation=dsl.Artifact(uri=str(tmp_path / "v")),
                      metrics=dsl.Metrics(uri=str(tmp_path / "m")))
    _assert_one_line(exc, line, ValidationFailed, "ValidationFailed: ")


def test_llm_sdg_failure_is_one_line(capsys, tmp_path, chunks_dir, base_model):
    """Every document fails (the endpoint answers 500): LlmSdgError, with the work folder's failures.jsonl named."""
    from embedforge.components.sdg.component import sdg

    from embedforge.stages.sdg.llm import LlmSdgError

    with FaultServer(stage_faults={"artifacts": "500"}) as srv:
        cfg = {"generator": "llm", "max_pairs": 4, "llm": {
            "base_url": srv.base_url, "model": "fault-model", "work_dir": str(tmp_path / "work"), "max_retries": 0,
            "max_units": 2, "dedup_model": base_model}}
        exc, line = _fail(capsys, sdg.python_func, chunks=dsl.Dataset(uri=str(chunks_dir)), pairs_file="",
                          base_model=base_model, config=cfg, pairs=dsl.Dataset(uri=str(tmp_path / "p")),
                          metrics=dsl.Metrics(uri=str(tmp_path / "m")))
    _assert_one_line(exc, line, LlmSdgError, "LlmSdgError: ", "failures.jsonl")


@pytest.mark.parametrize("exc", [
    ConfigError("sdg.llm.model 'x' is not served"), ParityError("onnx cosine 0.5 < export.parity_min_cosine 0.999"),
    ServingError("triton did not load model v3"), RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"),
    MemoryError(), KeyError("chunk_id"),
])
def test_any_exception_class_arrives_as_one_line(capsys, exc):
    """Classes no cheap real stage run raises here (GPU, Triton, parity) take the same path as the ones above."""
    with pytest.raises(type(exc)), reported_stage_errors():
        raise exc
    line = _parsed(capsys.readouterr().out)
    assert line == one_line(exc) and line.startswith(f"{type(exc).__name__}: ") and "\n" not in line


def test_stage_killed_before_reporting_falls_back_to_its_traceback_then_to_the_log():
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\nsome.module.WeirdThing: it broke\n"
    assert _parsed("\x1b[31mExecuting task 'sdg'\x1b[0m\n" + tb.replace("WeirdThing", "WeirdError")) == \
        "WeirdError: it broke"
    killed = "it printed no error (killed?); its output is in the log"
    assert _parsed(tb) == killed  # not an exception-like name: nothing is guessed
    assert _parsed("Pipeline 'embedforge' finished with status FAILURE\n") == killed

"""Shared fixtures: a tiny real corpus (documents from the bundled sample corpus), the real base model, and
session-scoped artifacts produced by running the real upstream stages once (so each stage's tests start from
real inputs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: Test helpers (real servers: MLflow, Triton, llama.cpp; pytest plugins conftest_mlflow/conftest_triton) live in
#: tests/support/ and are imported by module name from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A test run started in the background by a non-interactive shell (`make test &`, nohup in a script) inherits SIGINT
# ignored, and so would every process the tests start and then interrupt as a terminal's Ctrl-C does: those would
# finish instead. A handled signal is reset to its default in a child at exec, so handling it here gives them back
# their Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def on_ci() -> bool:
    """Whether this is a CI run (``CI=true``, as .ci/run and CI services set it)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def require(available: bool, what: str, install: str) -> None:
    """Skip the calling test (or, at module level, the module) when ``what`` is missing — on a developer's machine.

    Under CI a missing tool is an error, not a skip: a green CI must mean the test ran.
    """
    if available:
        return
    if on_ci():
        pytest.fail(f"{what} is missing on CI: {install}", pytrace=False)
    pytest.skip(f"{what} is not installed ({install})", allow_module_level=True)


def sigkill_when(argv: list[str], ready: Callable[[], bool], env: dict | None = None, timeout_s: float = 600) -> str:
    """Run ``argv`` in a process group of its own and SIGKILL the whole group — a preempted pod: no clean-up, no
    flush, child processes too — as soon as ``ready()`` holds (or it ended, or ``timeout_s`` passed); its stderr."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe nobody reads would stall the process
        proc = subprocess.Popen(argv, env=env or {**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err.seek(0)
        return err.read().decode("utf-8", "replace")


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBEDFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))

# 16 short topics of the sample corpus: enough documents for a 80/20 split with several eval documents.
TINY_TOPICS = [
    "assert", "break", "continue", "del", "global", "if", "import", "lambda", "nonlocal", "pass",
    "raise", "return", "while", "with", "yield", "for",
]


@pytest.fixture(scope="session")
def base_model() -> str:
    from embedforge.retrieval.encode import resolve_model_path

    return resolve_model_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from embedforge.sample_corpus import SAMPLE_CORPUS

    out = tmp_path_factory.mktemp("tiny_corpus")
    for name in TINY_TOPICS:
        shutil.copy(SAMPLE_CORPUS / f"{name}.rst", out / f"{name}.rst")
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "cranfield" / "corpus.jsonl").is_file():
        pytest.skip(f"shared dev collections not found at {SHARED_DATA}")
    return SHARED_DATA


# ------------------------------------------------------------------ real upstream artifacts, built once
@pytest.fixture(scope="session")
def chunks_dir(tmp_path_factory, tiny_corpus, base_model) -> Path:
    from embedforge.config import IngestConfig
    from embedforge.stages import ingest

    out = tmp_path_factory.mktemp("artifacts") / "chunks"
    ingest.run(tiny_corpus, out, IngestConfig(), base_model=base_model)
    return out


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory, chunks_dir, base_model) -> Path:
    from embedforge.config import SdgConfig
    from embedforge.stages import sdg

    out = tmp_path_factory.mktemp("artifacts") / "pairs"
    sdg.run(chunks_dir, out, SdgConfig(), base_model=base_model)
    return out


@pytest.fixture(scope="session")
def mined_dir(tmp_path_factory, chunks_dir, pairs_dir, base_model) -> Path:
    from embedforge.config import MineConfig
    from embedforge.stages import mine

    out = tmp_path_factory.mktemp("artifacts") / "mined"
    mine.run(chunks_dir, pairs_dir, out, MineConfig(**MINE_AS_HUMAN), base_model=base_model)
    return out


@pytest.fixture(scope="session")
def auto_trained(tmp_path_factory, mined_dir, base_model) -> Path:
    """A model folder (with its train manifest) of a small real ``train.schedule=auto`` run: 24 mined rows, 2
    folds, 2 candidates, so its result records a search (trials, probe steps and seconds)."""
    from embedforge import contracts
    from embedforge.config import PromptsConfig, TrainConfig
    from embedforge.stages import train

    root = tmp_path_factory.mktemp("auto_trained")
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in contracts.read_train_examples(mined_dir)[:24]]
    contracts.write_jsonl(root / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    cfg = TrainConfig(batch_size=4, max_seq_length=32, device="cpu", epochs=1.0, learning_rate=1e-4, schedule={
        "mode": "auto", "folds": 2, "min_holdout_queries": 4, "budget": 2.0, "candidates": [(1.0, 1.0), (0.3, 1.0)]})
    train.run(root / "mined", root / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    return root / "model"


#: The shared mined artifact mines the offline pairs the way bring-your-own/LLM pairs are mined (4 hard negatives,
#: no consistency filter), so mining and training tests exercise hard negatives; the offline defaults (none, filter
#: on) are tested in test_mine.py.
MINE_AS_HUMAN = {"offline_num_negatives": 4, "offline_consistency_rank": 0}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, mined_dir, base_model) -> Path:
    from embedforge.config import PromptsConfig, TrainConfig
    from embedforge.stages import train

    out = tmp_path_factory.mktemp("artifacts") / "model"
    train.run(mined_dir, out, TrainConfig(epochs=1, batch_size=16), base_model=base_model,
              prompts=PromptsConfig(query="query: ", document="passage: "))
    return out

"""Fixtures for the register / gate / promote / triton tests (load with ``pytest_plugins = ["conftest_mlflow"]``).

* ``mlflow_uri``: ONE real ``mlflow server`` per test session (sqlite + proxied artifacts in a tmp folder),
  started in the background as soon as collection shows a test needs it, so its start-up overlaps other set-up.
* ``saved_base_model``: the real base model saved as a sentence-transformers folder (with query/document
  prompts); ``tiny_model``: a small random model, real and loadable but deliberately worse (and fast to log).
* ``tiny_onnx_dir``: a real export-shaped folder: a small ONNX embedder (token-embedding lookup, masked mean
  pooling, L2 normalisation in the graph; inputs input_ids/attention_mask, output embeddings) plus the base
  model's tokenizer files, prompts and a parity.json. ``make_onnx`` builds variants (symbolic width, fixed
  batch, other output name, external data).
* ``production_mlflow``: ``mlflow server`` with basic auth on a real PostgreSQL and an S3 store (moto) on
  localhost, artifacts proxied (see :class:`ProductionMlflow`).
* ``write_evaluation`` / ``validation_dir``: evaluation.json / validation.json written by hand (the gate is a
  pure function of those numbers).
* ``run_artifacts``: one real run's stage artifacts (validate, evaluate, register in ``mlflow_uri``, gate) on the
  shared tiny-corpus artifacts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import require
from mlflow_server import MlflowServer, ProductionMlflow, postgres_bin_dir
from mlflow_server import production_mlflow as production_mlflow_server

ONNX_DIM = 8
VOCAB = 30522  # all-MiniLM-L6-v2's vocabulary, so real token ids index the table
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
PROMPTS = {"query": "query: ", "document": "passage: "}


_SERVER = pytest.StashKey[MlflowServer]()


def _start_server(config: pytest.Config) -> MlflowServer:
    server = MlflowServer(tempfile.mkdtemp(prefix="embedforge-mlflow-")).start()
    config.stash[_SERVER] = server
    return server


def pytest_collection_finish(session: pytest.Session) -> None:
    if _SERVER not in session.config.stash and any("mlflow_uri" in getattr(i, "fixturenames", ()) for i in session.items):
        _start_server(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_uri(pytestconfig) -> str:
    server = pytestconfig.stash.get(_SERVER, None) or _start_server(pytestconfig)
    return server.wait_ready()


@pytest.fixture
def model_name() -> str:
    """A registered-model name of its own for each test (they share one server)."""
    return f"ef-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def saved_base_model(tmp_path_factory, base_model) -> Path:
    from sentence_transformers import SentenceTransformer

    out = tmp_path_factory.mktemp("models") / "base"
    model = SentenceTransformer(base_model, device="cpu")
    model.prompts = dict(PROMPTS)
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, base_model) -> Path:
    """A real, loadable sentence-transformers folder (4.6 MB) that retrieves clearly worse than the base model:
    a randomly initialised one-layer, 32-wide BERT with the base model's tokenizer, mean pooling, normalisation."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(root / "hf")
    AutoTokenizer.from_pretrained(base_model).save_pretrained(root / "hf")
    modules = [models.Transformer(str(root / "hf"), max_seq_length=128), models.Pooling(32, "mean"), models.Normalize()]
    model = SentenceTransformer(modules=modules, device="cpu")
    model.prompts = dict(PROMPTS)
    model.save(str(root / "tiny"))
    return root / "tiny"


def make_onnx(path: Path, dim: int = ONNX_DIM, symbolic_dim: bool = False, fixed_batch: bool = False,
              output_name: str = "embeddings", external_data: bool = False, seed: int = 0) -> Path:
    """Write a small real ONNX embedder: embedding lookup -> masked mean -> L2 normalisation."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch = 2 if fixed_batch else "batch"
    table = np.random.default_rng(seed).standard_normal((VOCAB, dim)).astype(np.float32)
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
        numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
        helper.make_node("LpNormalization", ["mean"], [output_name], axis=-1, p=2),
    ]
    graph = helper.make_graph(
        nodes, "tiny_embedder",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "seq"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, "seq"])],
        outputs=[helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, "dim" if symbolic_dim else dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="embedforge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def make_onnx_dir(out: Path, base_model_dir: Path, **onnx_kwargs) -> Path:
    """An export-shaped folder: model.onnx + tokenizer files + prompts + parity.json + manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    make_onnx(out / "model.onnx", **onnx_kwargs)
    for name in TOKENIZER_FILES:
        if (base_model_dir / name).is_file():
            shutil.copy(base_model_dir / name, out / name)
    (out / "config_sentence_transformers.json").write_text(json.dumps({"prompts": PROMPTS}))
    (out / "parity.json").write_text(json.dumps({"min_cosine": 1.0, "samples": 4}))
    (out / "manifest.json").write_text(json.dumps({"stage": "export"}))
    return out


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory, base_model) -> Path:
    return make_onnx_dir(tmp_path_factory.mktemp("export") / "onnx", Path(base_model))


def write_evaluation(out: Path, finetuned: dict, base: dict, external: dict | None = None, device: str = "") -> Path:
    """An evaluate-shaped folder whose result holds the given numbers (computed on ``device``, as recorded)."""
    from embedforge.contracts import (
        EVALUATION_FILE,
        EvaluationResult,
        ExternalEvaluation,
        StageTimer,
        write_json,
    )

    out.mkdir(parents=True, exist_ok=True)
    ext = None
    if external:
        ext = ExternalEvaluation(**{"delta": {}, "counts": {"queries": 3}, **external})
    ev = EvaluationResult(primary_metric="ndcg@10", base=base, finetuned=finetuned, delta={}, external=ext,
                          counts={"queries": 12, "corpus": 40}, device=device)
    write_json(out / EVALUATION_FILE, ev.model_dump(mode="json"))
    StageTimer("evaluate").write_manifest(out, result=ev)
    return out


@pytest.fixture
def validation_dir(tmp_path) -> Path:
    from embedforge.contracts import VALIDATION_FILE, StageTimer, ValidationResult

    out = tmp_path / "validation"
    out.mkdir()
    (out / VALIDATION_FILE).write_text(json.dumps({"success": True, "statistics": {"evaluated_expectations": 7}}))
    StageTimer("validate").write_manifest(out, result=ValidationResult(success=True))
    return out


@pytest.fixture(scope="session")
def run_artifacts(tmp_path_factory, chunks_dir, pairs_dir, mined_dir, model_dir, base_model, mlflow_uri,
                  tiny_onnx_dir):
    """Every stage artifact of one real run after export (the report and the model card read them), made by the
    real stages on the shared artifacts and registered in the session's MLflow server (a small real ONNX export
    stands in for the export stage's, which neither reads)."""
    from embedforge.config import (
        EvaluateConfig,
        GateConfig,
        RegisterConfig,
        ValidateConfig,
    )
    from embedforge.stages import evaluate, gate, validate
    from embedforge.stages import register as registry

    root = tmp_path_factory.mktemp("run")
    validate.run(chunks_dir, pairs_dir, root / "validation", ValidateConfig())
    evaluate.run(chunks_dir, pairs_dir, base_model, model_dir, root / "evaluation", EvaluateConfig(),
                 base_embeddings_dir=mined_dir)
    name = f"report-test-{root.name}"
    registry.run(model_dir, tiny_onnx_dir, root / "evaluation", root / "validation", root / "registry",
                 RegisterConfig(model_name=name), mlflow_uri, params={}, pairs_dir=pairs_dir)
    gate.run(root / "evaluation", root / "registry", chunks_dir, pairs_dir, root / "decision", GateConfig(),
             EvaluateConfig(), mlflow_uri)
    return {"ingest": chunks_dir, "validate": root / "validation", "train": model_dir,
            "evaluate": root / "evaluation", "register": root / "registry", "gate": root / "decision"}


# Test modules use the builders through these fixtures (importing this plugin module directly would bypass
# pytest's assertion rewriting of it).
@pytest.fixture
def onnx_file():
    """``onnx_file(path, dim=8, symbolic_dim=False, fixed_batch=False, output_name=..., external_data=False)``."""
    return make_onnx


@pytest.fixture
def export_dir(base_model):
    """``export_dir(out, **make_onnx_kwargs)``: an export-shaped folder with the base model's tokenizer."""
    return lambda out, **kw: make_onnx_dir(out, Path(base_model), **kw)


@pytest.fixture
def evaluation_dir_factory():
    """``evaluation_dir_factory(out, finetuned, base, external=None)``: an evaluate-shaped folder."""
    return write_evaluation


# ------------------------------------------------------------------- production-shaped stores (PostgreSQL + S3)
@pytest.fixture(scope="session")
def production_mlflow(tmp_path_factory) -> ProductionMlflow:
    """A real PostgreSQL cluster (Debian's ``postgresql`` binaries, throwaway, free port), an S3 bucket on
    localhost, and ``mlflow server`` using them with basic auth; a non-admin pipeline user created through the
    auth API. The S3 keys go to the server's environment only (proxied artifacts: clients need none).

    Skipped only when the PostgreSQL binaries are absent (``apt-get install -y postgresql``).
    """
    bin_dir = postgres_bin_dir()
    require(bin_dir is not None, "PostgreSQL binaries (/usr/lib/postgresql/*/bin)",
            "apt-get update && apt-get install -y postgresql")
    with production_mlflow_server(tmp_path_factory.mktemp("prod-mlflow"), bin_dir) as prod:
        yield prod

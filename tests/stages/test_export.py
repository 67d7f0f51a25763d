"""Export stage: real fine-tuned model (conftest ``model_dir``), real torch.onnx export, real ONNX Runtime.

The main export runs once, through the KFP component's ``python_func`` with real artifact objects; the other
tests inspect its output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedforge import contracts
from embedforge.config import ExportConfig
from embedforge.errors import InputError, ParityError
from embedforge.stages import export

PARITY_SAMPLES = 12
pytest_plugins = ["conftest_mlflow"]  # tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model_dir, chunks_dir):
    """(output folder, metrics artifact) of the export component on the fine-tuned model."""
    from embedforge.components.export.component import export as component
    from kfp import dsl

    root = tmp_path_factory.mktemp("export")
    onnx_model = dsl.Model(uri=str(root / "onnx"))
    metrics = dsl.Metrics(uri=str(root / "metrics"))
    component.python_func(
        model=dsl.Model(uri=str(model_dir)), chunks=dsl.Dataset(uri=str(chunks_dir)),
        config={"parity_samples": PARITY_SAMPLES}, onnx_model=onnx_model, metrics=metrics,
    )
    return Path(onnx_model.path), metrics


@pytest.fixture(scope="module")
def st_model(model_dir):
    from embedforge.retrieval.encode import load_model

    return load_model(str(model_dir), device="cpu")


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path / contracts.ONNX_FILE), providers=["CPUExecutionProvider"])


def test_graph_io_names_types_dynamic_axes_and_opset(exported, st_model):
    import onnx

    out, _ = exported
    proto = onnx.load(str(out / contracts.ONNX_FILE))
    onnx.checker.check_model(proto, full_check=True)
    assert export.onnx_opset(out / contracts.ONNX_FILE) == ExportConfig().opset >= 17

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in proto.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}  # token_type_ids are made inside the graph
    for i in inputs.values():
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert shape(i) == ["batch", "sequence"]
    (output,) = proto.graph.output
    assert output.name == "embeddings"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert shape(output) == ["batch", 384]

    # Two different batch sizes and sequence lengths through the same session.
    sess = _session(out)
    rng = np.random.default_rng(0)
    for batch, length in [(1, 5), (4, 37)]:
        ids = rng.integers(1000, 20000, size=(batch, length), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        mask[-1, length // 2:] = 0  # the last row is padded
        (emb,) = sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
        assert emb.shape == (batch, 384) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_parity_report_and_manifest(exported, st_model):
    out, metrics = exported
    parity = json.loads((out / contracts.PARITY_FILE).read_text())
    assert parity["passed"] is True
    assert parity["samples"] == PARITY_SAMPLES
    assert parity["min_cosine"] >= ExportConfig().parity_min_cosine
    assert parity["min_cosine"] <= parity["mean_cosine"] <= 1.0 + 1e-6
    assert parity["max_abs_diff"] < 1e-3
    assert parity["opset"] == 17 and parity["onnxruntime_version"]
    assert len(parity["batch_sizes"]) > 1 and parity["sequence_lengths"][0] < parity["sequence_lengths"][1]
    assert parity["prompt"] == st_model.prompts["document"] == "passage: "

    m = contracts.read_manifest(out)
    assert m.stage == "export"
    assert m.result.dim == 384 and m.result.opset == 17
    assert m.result.file_size == (out / contracts.ONNX_FILE).stat().st_size
    assert m.result.pooling == "mean"
    assert metrics.metadata["parity_min_cosine"] == parity["min_cosine"]
    assert metrics.metadata["dim"] == 384 and metrics.metadata["opset"] == 17


def test_folder_alone_tokenises_like_training(exported, st_model):
    """A server with only the export folder (tokenizer + prompts + max_seq_length) reproduces model.encode."""
    from transformers import AutoTokenizer

    from embedforge.retrieval.encode import encode

    out, _ = exported
    tok = AutoTokenizer.from_pretrained(str(out))
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    max_len = json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert prompts == {"query": "query: ", "document": "passage: "} and max_len == st_model.max_seq_length
    long_text = " ".join(["The yield statement suspends the generator and returns a value."] * 60)  # > max_len
    queries = ["how do I leave a loop early", "what does del do to a name", long_text]
    enc = tok([prompts["query"] + q for q in queries], padding=True, truncation=True, max_length=max_len,
              return_tensors="np")
    assert enc["input_ids"].shape[1] == max_len  # the long text is truncated like sentence-transformers does
    (got,) = _session(out).run(["embeddings"], {"input_ids": enc["input_ids"].astype(np.int64),
                                               "attention_mask": enc["attention_mask"].astype(np.int64)})
    want = encode(st_model, queries, kind="query")
    cos = np.sum(got * want, axis=1)
    assert cos.min() > 0.9999, cos


def test_tampered_graph_fails_parity_and_still_writes_the_report(exported, st_model, chunks_dir, tmp_path):
    """An honest break: perturb one attention weight matrix of the exported graph, then run the parity check."""
    import onnx
    from onnx import numpy_helper

    out, _ = exported
    proto = onnx.load(str(out / contracts.ONNX_FILE))
    rng = np.random.default_rng(1)
    big = [t for t in proto.graph.initializer if len(t.dims) == 2 and t.dims[0] == t.dims[1] == 384]
    assert big, "expected square 384x384 weight matrices in the graph"
    w = numpy_helper.to_array(big[0])
    big[0].CopyFrom(numpy_helper.from_array((w + rng.normal(0, 0.2, w.shape)).astype(w.dtype), big[0].name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))

    chunks = export.pick_parity_chunks(contracts.read_chunks(chunks_dir), 6)
    report_path = tmp_path / contracts.PARITY_FILE
    with pytest.raises(ParityError) as err:
        export.check_parity(bad, st_model, chunks, ExportConfig(), report_path)
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["min_cosine"] < ExportConfig().parity_min_cosine
    assert report["worst_chunk_id"] in str(err.value) and f"{report['min_cosine']:.6f}" in str(err.value)
    assert report["worst_chunk_id"] in {c.chunk_id for c in chunks}
    # The untampered graph passes the same check on the same chunks.
    assert export.check_parity(out / contracts.ONNX_FILE, st_model, chunks, ExportConfig(),
                               tmp_path / "ok.json")["passed"]


def test_cls_pooling_is_exported_from_the_pooling_module(base_model, chunks_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    base = SentenceTransformer(base_model, device="cpu")
    cls_model = SentenceTransformer(modules=[base[0], Pooling(384, pooling_mode="cls"), Normalize()], device="cpu")
    cls_model.prompts = {"query": "", "document": ""}
    cls_model.save(str(tmp_path / "cls_model"))

    m = export.run(tmp_path / "cls_model", chunks_dir, tmp_path / "onnx", ExportConfig(parity_samples=6))
    assert m.result.pooling == "cls"
    parity = json.loads((tmp_path / "onnx" / contracts.PARITY_FILE).read_text())
    assert parity["passed"] and parity["min_cosine"] >= 0.999
    # CLS really differs from mean pooling: the graph is not silently mean-pooling.
    texts = [c.text for c in contracts.read_chunks(chunks_dir)[:3]]
    cls_emb = cls_model.encode(texts, normalize_embeddings=True)
    mean_emb = base.encode(texts, normalize_embeddings=True)
    assert np.sum(cls_emb * mean_emb, axis=1).max() < 0.99


def test_prompt_excluding_pooling_is_rejected(base_model, chunks_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    base = SentenceTransformer(base_model, device="cpu")
    model = SentenceTransformer(modules=[base[0], Pooling(384, include_prompt=False)], device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save(str(tmp_path / "m"))
    with pytest.raises(InputError, match="include_prompt"):
        export.run(tmp_path / "m", chunks_dir, tmp_path / "onnx", ExportConfig())


def test_bad_inputs_are_named(chunks_dir, model_dir, tmp_path):
    with pytest.raises(InputError, match="modules.json"):
        export.run(tmp_path, chunks_dir, tmp_path / "onnx", ExportConfig())
    empty = tmp_path / "chunks"
    empty.mkdir()
    (empty / contracts.CHUNKS_FILE).write_text("")
    with pytest.raises(InputError, match="no chunks"):
        export.run(model_dir, empty, tmp_path / "onnx", ExportConfig())


def test_pick_parity_chunks_spans_lengths(chunks_dir):
    chunks = contracts.read_chunks(chunks_dir)
    picked = export.pick_parity_chunks(chunks, 5)
    lengths = sorted(len(c.text) for c in chunks)
    assert len(picked) == 5
    assert {len(c.text) for c in picked} >= {lengths[0], lengths[-1]}
    assert export.pick_parity_chunks(chunks[:3], 10) == chunks[:3]


def test_fp16_variant_and_tensorrt_plan_where_tensorrt_is_missing(tiny_model, chunks_dir, tmp_path, caplog):
    """export.fp16 writes a checked FP16 graph beside the FP32 one; export.tensorrt_plan without the tensorrt
    package skips the plan with a message saying why and what to do, and the step still succeeds."""
    import importlib.util

    import onnx

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here: the plan is built, not skipped")
    out = tmp_path / "onnx"
    with caplog.at_level("WARNING"):
        m = export.run(tiny_model, chunks_dir, out, ExportConfig(parity_samples=6, fp16=True, tensorrt_plan=True))
    half = onnx.load(str(out / export.FP16_ONNX_FILE))
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in half.graph.initializer}
    assert [(i.name, i.type.tensor_type.elem_type) for i in half.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64), ("attention_mask", onnx.TensorProto.INT64)]
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rep = json.loads((out / export.FP16_PARITY_FILE).read_text())
    variants = json.loads((out / export.VARIANTS_FILE).read_text())
    assert rep["passed"] and rep["threshold"] == 0.995 and variants["fp16"]["min_cosine"] == rep["min_cosine"] >= 0.995
    assert not (out / export.PLAN_FILE).exists() and variants["tensorrt_plan"]["file"] is None
    assert variants["tensorrt_plan"]["status"].startswith("skipped: the tensorrt package is not importable")
    assert {export.FP16_ONNX_FILE, export.VARIANTS_FILE} <= set(m.result.files)
    assert "tensorrt package is not importable" in caplog.text


# ------------------------------------------------------------------------------------------------ decoders
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_decoder import make_decoder

    return make_decoder(tmp_path_factory.mktemp("decoder") / "llama", "llama")


@pytest.mark.parametrize(("pooling", "attention", "side", "external"), [
    ("lasttoken", "causal", "left", True), ("lasttoken", "bidirectional", "right", False),
    ("mean", "bidirectional", "left", False), ("mean", "causal", "right", True),
])
def test_decoder_exports_with_its_pooling_in_the_graph(tiny_llama, chunks_dir, tmp_path, pooling, attention, side,
                                                       external):
    """Each pooling x attention mode of a decoder embedder passes the FP32 and FP16 parity gates; with
    external_data_mb=0 the weights live in model.onnx.data (as a > 2 GB model's must) and the folder still
    serves on its own."""
    import onnx

    from embedforge.config import ModelConfig
    from embedforge.onnx.signature import inspect_onnx
    from embedforge.retrieval import loading as models

    model = models.load(str(tiny_llama), ModelConfig(pooling=pooling, attention=attention, padding_side=side))
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save(str(tmp_path / "model"))
    out = tmp_path / "onnx"
    cfg = ExportConfig(parity_samples=8, fp16=True, external_data_mb=0 if external else 1024)
    m = export.run(tmp_path / "model", chunks_dir, out, cfg)
    assert m.result.pooling == pooling
    for name in (contracts.PARITY_FILE, export.FP16_PARITY_FILE):
        rep = json.loads((out / name).read_text())
        assert rep["passed"] and len(rep["batch_sizes"]) > 1, name
    data = {contracts.ONNX_FILE + ".data", export.FP16_ONNX_FILE + ".data"}
    assert (data <= set(m.result.files)) is external and all((out / f).is_file() for f in m.result.files)
    assert inspect_onnx(out / contracts.ONNX_FILE).external_data == ([contracts.ONNX_FILE + ".data"] if external else [])
    graph = onnx.load(str(out / contracts.ONNX_FILE), load_external_data=False)
    stored_outside = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert bool(stored_outside) is external
    assert m.result.file_size == sum((out / f).stat().st_size for f in m.result.files if f.startswith("model.onnx"))
    if external:  # the Triton repository takes the served graph's weights along, and no weights as tokenizer files
        from embedforge.config import TritonConfig
        from embedforge.serving import repository as triton

        triton.write_model_repository(out, tmp_path / "repo", TritonConfig(), 1, serve=False)
        data = list((tmp_path / "repo").rglob("*.onnx.data"))
        assert [p.name for p in data] == [contracts.ONNX_FILE + ".data"] and "tokenizer" not in data[0].parts
    # The export folder's tokenizer pads on the trained side and appends EOS where last-token pooling reads it.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.padding_side == side
    assert (tok("del removes a name")["input_ids"][-1] == tok.eos_token_id) is (pooling == "lasttoken")

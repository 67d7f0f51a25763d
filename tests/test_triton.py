"""Triton model repository: signature read from real ONNX graphs, config.pbtxt that parses into ModelConfig,
layout of the version folder, and the failures a user can act on."""

from __future__ import annotations

import numpy as np
import pytest

pytest_plugins = ["conftest_mlflow"]
DIM = 8


def _run_onnx(path, n=3, seq=5):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.arange(n * seq, dtype=np.int64).reshape(n, seq) + 1000
    mask = np.ones((n, seq), dtype=np.int64)
    mask[0, 3:] = 0
    (out,) = sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
    return out


def test_inspect_reads_inputs_and_dim(tmp_path, onnx_file):
    from embedforge.triton import inspect_onnx

    sig = inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=12))
    assert [(t.name, t.data_type, t.dims) for t in sig.inputs] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert (sig.output.name, sig.output.data_type, sig.dim) == ("embeddings", "TYPE_FP32", 12)
    assert sig.external_data == []


def test_symbolic_width_is_inferred_by_running_the_graph(tmp_path, onnx_file):
    from embedforge.triton import inspect_onnx

    assert inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=6, symbolic_dim=True)).dim == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"output_name": "sentence_embedding"}, "lack 'embeddings'"),
    ({"fixed_batch": True}, "fixed batch dimension"),
])
def test_unservable_graphs_are_rejected(tmp_path, onnx_file, kwargs, match):
    from embedforge.errors import InputError
    from embedforge.triton import inspect_onnx

    with pytest.raises(InputError, match=match):
        inspect_onnx(onnx_file(tmp_path / "model.onnx", **kwargs))


def test_not_an_onnx_file(tmp_path):
    from embedforge.errors import InputError
    from embedforge.triton import inspect_onnx

    (tmp_path / "model.onnx").write_bytes(b"\x00\xffnot a protobuf\x12\x99")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        inspect_onnx(tmp_path / "model.onnx")
    with pytest.raises(InputError, match="does not exist"):
        inspect_onnx(tmp_path / "missing.onnx")


def test_config_parses_into_model_config(tmp_path, onnx_file):
    from tritonclient.grpc import model_config_pb2 as mc

    from embedforge.config import TritonConfig
    from embedforge.triton import build_config, inspect_onnx, validate_config

    cfg = TritonConfig(model_name="my_embedder", max_batch_size=32, instance_kind="KIND_CPU", max_queue_delay_us=500)
    text = build_config(inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=DIM)), cfg, {"query_prompt": "query: "})
    conf = validate_config(text)
    assert isinstance(conf, mc.ModelConfig)
    assert (conf.name, conf.platform, conf.backend, conf.max_batch_size) == ("my_embedder", "onnxruntime_onnx", "onnxruntime", 32)
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in conf.input] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in conf.output] == [
        ("embeddings", "TYPE_FP32", [DIM])]
    assert conf.dynamic_batching.max_queue_delay_microseconds == 500
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in conf.instance_group] == ["KIND_CPU"]
    assert conf.parameters["query_prompt"].string_value == "query: "
    assert conf.version_policy.latest.num_versions == 1


@pytest.mark.parametrize("text, match", [
    ('name: "x"\nplatform: "onnxruntime_onnx"\nmax_batch_size: "many"\n', r"max_batch_size"),
    ('name: "x"\nno_such_field: 1\n', r"no_such_field"),
    ('name: "x" input { name: "a" data_type: TYPE_INT64 dims: [-1] \n', r"invalid Triton model configuration"),
    ('name: "x"\nplatform: "onnxruntime_onnx"\n', r"no input"),
    ('platform: "onnxruntime_onnx"\ninput { name: "a" data_type: TYPE_INT64 dims: -1 }\n'
     'output { name: "b" data_type: TYPE_FP32 dims: 4 }\n', r"no name"),
])
def test_invalid_config_text_raises_config_error(text, match):
    from embedforge.errors import ConfigError
    from embedforge.triton import validate_config

    with pytest.raises(ConfigError, match=match):
        validate_config(text)


def test_repository_layout_and_served_graph(tmp_path, export_dir):
    from transformers import AutoTokenizer

    from embedforge.config import TritonConfig
    from embedforge.triton import CONFIG_FILE, validate_config, write_model_repository

    onnx_dir = export_dir(tmp_path / "onnx", dim=DIM)
    repo = tmp_path / "repo"
    vdir = write_model_repository(onnx_dir, repo, TritonConfig(), "3", parameters={"registered_version": "3"})
    assert vdir == repo / "embedforge_embedder" / "3"
    assert sorted(p.name for p in vdir.iterdir()) == ["model.onnx", "tokenizer"]
    tok_files = sorted(p.name for p in (vdir / "tokenizer").iterdir())
    assert "tokenizer.json" in tok_files and "config_sentence_transformers.json" in tok_files
    assert "parity.json" not in tok_files and "manifest.json" not in tok_files
    conf = validate_config((repo / "embedforge_embedder" / CONFIG_FILE).read_text())
    assert conf.parameters["registered_version"].string_value == "3"
    assert conf.parameters["document_prompt"].string_value == "passage: "

    # the copied graph is the exported one and runs on real tokenizer output from the copied tokenizer
    np.testing.assert_allclose(_run_onnx(vdir / "model.onnx"), _run_onnx(onnx_dir / "model.onnx"))
    tok = AutoTokenizer.from_pretrained(str(vdir / "tokenizer"))
    enc = tok(["query: what does yield do"], return_tensors="np")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["embeddings"], {"input_ids": enc["input_ids"].astype(np.int64),
                                       "attention_mask": enc["attention_mask"].astype(np.int64)})
    assert emb.shape == (1, DIM)
    assert np.linalg.norm(emb, axis=1) == pytest.approx(1.0, abs=1e-5)

    # a second version is added beside the first; both stay
    write_model_repository(onnx_dir, repo, TritonConfig(), 4)
    assert sorted(p.name for p in (repo / "embedforge_embedder").iterdir()) == ["3", "4", CONFIG_FILE]


def test_external_data_is_copied_beside_the_graph(tmp_path, export_dir):
    from embedforge.config import TritonConfig
    from embedforge.triton import write_model_repository

    onnx_dir = export_dir(tmp_path / "onnx", external_data=True)
    assert (onnx_dir / "model.onnx.data").is_file()
    vdir = write_model_repository(onnx_dir, tmp_path / "repo", TritonConfig(), 1)
    assert (vdir / "model.onnx.data").is_file()
    assert not (vdir / "tokenizer" / "model.onnx.data").exists()
    np.testing.assert_allclose(_run_onnx(vdir / "model.onnx"), _run_onnx(onnx_dir / "model.onnx"))


def test_version_must_be_a_positive_integer(tmp_path, tiny_onnx_dir):
    from embedforge.config import TritonConfig
    from embedforge.errors import InputError
    from embedforge.triton import write_model_repository

    for bad in ("0", "v2", "1.5"):
        with pytest.raises(InputError, match="positive integers"):
            write_model_repository(tiny_onnx_dir, tmp_path / "repo", TritonConfig(), bad)


def test_repository_from_the_real_export_stage(tmp_path, tiny_model, chunks_dir):
    """The export stage's real output (tiny model: fast) turns into a repository whose graph matches the model."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    from embedforge import export
    from embedforge.config import ExportConfig, TritonConfig
    from embedforge.triton import CONFIG_FILE, inspect_onnx, validate_config, write_model_repository

    onnx_dir = tmp_path / "onnx"
    export.run(tiny_model, chunks_dir, onnx_dir, ExportConfig(parity_samples=4))
    sig = inspect_onnx(onnx_dir / "model.onnx")
    assert [t.name for t in sig.inputs] == ["input_ids", "attention_mask"] and sig.dim == 32
    vdir = write_model_repository(onnx_dir, tmp_path / "repo", TritonConfig(), 1)
    conf = validate_config((vdir.parent / CONFIG_FILE).read_text())
    assert [i.name for i in conf.input] == ["input_ids", "attention_mask"] and list(conf.output[0].dims) == [32]
    assert conf.parameters["query_prompt"].string_value == "query: "

    # client side of serving: tokenizer + prompt from the version folder, graph from model.onnx
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(vdir / "tokenizer"))
    text = conf.parameters["query_prompt"].string_value + "what does the yield statement do"
    enc = tok([text], return_tensors="np")
    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    (served,) = sess.run(["embeddings"], {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    st = SentenceTransformer(str(tiny_model), device="cpu")
    ref = st.encode(["what does the yield statement do"], prompt_name="query", normalize_embeddings=True)
    assert float(served[0] @ ref[0]) > 0.999

"""Triton model repository: signature read from real ONNX graphs, configs (embedder, tokenizer, ensemble,
TensorRT accelerator) that parse into ModelConfig, the repository layout, and the failures a user can act on.
Serving them on a real server is tests/serving/test_serving.py."""

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
    from embedforge.onnx.signature import inspect_onnx

    sig = inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=12))
    assert [(t.name, t.data_type, t.dims) for t in sig.inputs] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert (sig.output.name, sig.output.data_type, sig.dim) == ("embeddings", "TYPE_FP32", 12)
    assert sig.external_data == []


def test_symbolic_width_is_inferred_by_running_the_graph(tmp_path, onnx_file):
    from embedforge.onnx.signature import inspect_onnx

    assert inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=6, symbolic_dim=True)).dim == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"output_name": "sentence_embedding"}, "lack 'embeddings'"),
    ({"fixed_batch": True}, "fixed batch dimension"),
])
def test_unservable_graphs_are_rejected(tmp_path, onnx_file, kwargs, match):
    from embedforge.errors import InputError
    from embedforge.onnx.signature import inspect_onnx

    with pytest.raises(InputError, match=match):
        inspect_onnx(onnx_file(tmp_path / "model.onnx", **kwargs))


def test_not_an_onnx_file(tmp_path):
    from embedforge.errors import InputError
    from embedforge.onnx.signature import inspect_onnx

    (tmp_path / "model.onnx").write_bytes(b"\x00\xffnot a protobuf\x12\x99")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        inspect_onnx(tmp_path / "model.onnx")
    with pytest.raises(InputError, match="does not exist"):
        inspect_onnx(tmp_path / "missing.onnx")


def test_config_parses_into_model_config(tmp_path, onnx_file):
    from tritonclient.grpc import model_config_pb2 as mc

    from embedforge.config import TritonConfig
    from embedforge.onnx.signature import inspect_onnx
    from embedforge.serving.repository import build_config, validate_config

    cfg = TritonConfig(model_name="my_embedder", max_batch_size=32, instance_kind="KIND_CPU", max_queue_delay_us=500)
    text = build_config(inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=DIM)), cfg, {"query_prompt": "query: "})
    conf = validate_config(text)
    assert isinstance(conf, mc.ModelConfig)
    assert (conf.name, conf.platform, conf.backend, conf.max_batch_size) == (
        "my_embedder_onnx", "onnxruntime_onnx", "onnxruntime", 32)
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in conf.input] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1])]
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in conf.output] == [
        ("embeddings", "TYPE_FP32", [DIM])]
    assert conf.dynamic_batching.max_queue_delay_microseconds == 500
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in conf.instance_group] == ["KIND_CPU"]
    assert conf.parameters["query_prompt"].string_value == "query: "
    assert list(conf.version_policy.specific.versions) == [1]  # exactly one version, not the highest folder
    assert not conf.optimization.execution_accelerators.gpu_execution_accelerator


def test_tensorrt_accelerator_options_from_config(tmp_path, onnx_file):
    from embedforge.config import TritonConfig
    from embedforge.onnx.signature import inspect_onnx
    from embedforge.serving.repository import build_config, validate_config

    cfg = TritonConfig(tensorrt=True, tensorrt_opt_shape=(8, 64), tensorrt_max_shape=(32, 256),
                       tensorrt_cache_dir="/trt-cache")
    conf = validate_config(build_config(inspect_onnx(onnx_file(tmp_path / "model.onnx")), cfg, version=4))
    (trt,) = conf.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert dict(trt.parameters) == {
        "precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30),
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
        "trt_profile_opt_shapes": "input_ids:8x64,attention_mask:8x64",
        "trt_profile_max_shapes": "input_ids:32x256,attention_mask:32x256",
        "trt_engine_cache_enable": "true", "trt_engine_cache_path": "/trt-cache",
    }
    assert list(conf.version_policy.specific.versions) == [4]


def test_tensorrt_accelerator_is_an_onnxruntime_option():
    from pydantic import ValidationError

    from embedforge.config import TritonConfig

    with pytest.raises(ValidationError, match="option of the onnxruntime backend"):
        TritonConfig(tensorrt=True, embedder_backend="python")


def test_ensemble_and_tokenizer_configs(tmp_path, onnx_file):
    from tritonclient.grpc import model_config_pb2 as mc

    from embedforge.config import TritonConfig
    from embedforge.onnx.signature import inspect_onnx
    from embedforge.serving.repository import (
        build_ensemble_config,
        build_tokenizer_config,
        validate_config,
    )

    cfg = TritonConfig(model_name="emb", max_batch_size=16)
    sig = inspect_onnx(onnx_file(tmp_path / "model.onnx", dim=DIM))
    ens = validate_config(build_ensemble_config(sig, cfg, 5, {"registered_version": "5"}))
    assert (ens.name, ens.platform, ens.max_batch_size) == ("emb", "ensemble", 16)
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims), i.optional) for i in ens.input] == [
        ("text", "TYPE_STRING", [1], False), ("input_type", "TYPE_STRING", [1], True)]
    assert [(o.name, list(o.dims)) for o in ens.output] == [("embeddings", [DIM])]
    assert [(s.model_name, s.model_version) for s in ens.ensemble_scheduling.step] == [
        ("emb_tokenizer", 5), ("emb_onnx", 5)]
    tok = validate_config(build_tokenizer_config(cfg, 5))
    assert (tok.name, tok.backend, list(tok.version_policy.specific.versions)) == ("emb_tokenizer", "python", [5])
    assert [o.name for o in tok.output] == ["input_ids", "attention_mask"]


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
    from embedforge.serving.repository import validate_config

    with pytest.raises(ConfigError, match=match):
        validate_config(text)


def test_repository_layout_and_served_graph(tmp_path, export_dir):
    from embedforge.config import TritonConfig
    from embedforge.serving.repository import (
        CONFIG_FILE,
        SERVED_CONFIG,
        served_version,
        validate_config,
        write_model_repository,
    )

    onnx_dir = export_dir(tmp_path / "onnx", dim=DIM)
    repo = tmp_path / "repo"
    vdir = write_model_repository(onnx_dir, repo, TritonConfig(), "3", parameters={"registered_version": "3"})
    assert vdir == repo / "embedforge_embedder" / "3"
    assert sorted(p.name for p in repo.iterdir()) == [
        "embedforge_embedder", "embedforge_embedder_onnx", "embedforge_embedder_tokenizer"]
    emb_dir, tok_dir = repo / "embedforge_embedder_onnx" / "3", repo / "embedforge_embedder_tokenizer" / "3"
    assert sorted(p.name for p in emb_dir.iterdir()) == ["model.onnx", SERVED_CONFIG]
    assert sorted(p.name for p in tok_dir.iterdir()) == ["model.py", SERVED_CONFIG, "tokenizer"]
    tok_files = sorted(p.name for p in (tok_dir / "tokenizer").iterdir())
    assert "tokenizer.json" in tok_files and "config_sentence_transformers.json" in tok_files
    assert "parity.json" not in tok_files and "manifest.json" not in tok_files and "model.onnx" not in tok_files
    conf = validate_config((repo / "embedforge_embedder" / CONFIG_FILE).read_text())
    assert conf.parameters["registered_version"].string_value == "3"
    assert conf.parameters["document_prompt"].string_value == "passage: "
    np.testing.assert_allclose(_run_onnx(emb_dir / "model.onnx"), _run_onnx(onnx_dir / "model.onnx"))

    # a second version is staged beside the first without being served; serving it switches all three configs
    write_model_repository(onnx_dir, repo, TritonConfig(), 4, serve=False)
    assert sorted(p.name for p in (repo / "embedforge_embedder_onnx").iterdir()) == ["3", "4", CONFIG_FILE]
    assert served_version(repo, "embedforge_embedder") == "3"
    write_model_repository(onnx_dir, repo, TritonConfig(), 4)
    assert served_version(repo, "embedforge_embedder") == "4"
    for name in ("embedforge_embedder_onnx", "embedforge_embedder_tokenizer"):
        assert list(validate_config((repo / name / CONFIG_FILE).read_text()).version_policy.specific.versions) == [4]


def test_serving_a_version_that_is_not_there(tmp_path, tiny_onnx_dir):
    from embedforge.config import TritonConfig
    from embedforge.errors import InputError
    from embedforge.serving.repository import serve_version, write_model_repository

    write_model_repository(tiny_onnx_dir, tmp_path, TritonConfig(), 1)
    with pytest.raises(InputError, match="version 2 of 'embedforge_embedder' is not in the model repository"):
        serve_version(tmp_path, "embedforge_embedder", 2)


def test_fp16_and_plan_variants_must_have_been_exported(tmp_path, tiny_onnx_dir):
    from embedforge.config import TritonConfig
    from embedforge.errors import InputError
    from embedforge.serving.repository import write_model_repository

    with pytest.raises(InputError, match="precision=fp16 needs .*model_fp16.onnx: export with export.fp16=true"):
        write_model_repository(tiny_onnx_dir, tmp_path, TritonConfig(precision="fp16"), 1)
    with pytest.raises(InputError, match="model.plan does not exist: export with export.tensorrt_plan=true"):
        write_model_repository(tiny_onnx_dir, tmp_path, TritonConfig(embedder_backend="tensorrt_plan"), 1)


def test_external_data_is_copied_beside_the_graph(tmp_path, export_dir):
    from embedforge.config import TritonConfig
    from embedforge.serving.repository import write_model_repository

    onnx_dir = export_dir(tmp_path / "onnx", external_data=True)
    assert (onnx_dir / "model.onnx.data").is_file()
    write_model_repository(onnx_dir, tmp_path / "repo", TritonConfig(), 1)
    vdir = tmp_path / "repo" / "embedforge_embedder_onnx" / "1"
    assert (vdir / "model.onnx.data").is_file()
    assert not (tmp_path / "repo" / "embedforge_embedder_tokenizer" / "1" / "tokenizer" / "model.onnx.data").exists()
    np.testing.assert_allclose(_run_onnx(vdir / "model.onnx"), _run_onnx(onnx_dir / "model.onnx"))


def test_version_must_be_a_positive_integer(tmp_path, tiny_onnx_dir):
    from embedforge.config import TritonConfig
    from embedforge.errors import InputError
    from embedforge.serving.repository import write_model_repository

    for bad in ("0", "v2", "1.5"):
        with pytest.raises(InputError, match="positive integers"):
            write_model_repository(tiny_onnx_dir, tmp_path / "repo", TritonConfig(), bad)


def test_repository_from_the_real_export_stage(tmp_path, tiny_model, chunks_dir):
    """The export stage's real output turns into a repository whose files reproduce the model: the rollout
    probe's local reference (version tokenizer + prompt + max_seq_length, then the graph) equals
    SentenceTransformer.encode, also for a text longer than max_seq_length."""
    from sentence_transformers import SentenceTransformer

    from embedforge.config import ExportConfig, TritonConfig
    from embedforge.onnx.signature import inspect_onnx
    from embedforge.serving.repository import (
        CONFIG_FILE,
        validate_config,
        write_model_repository,
    )
    from embedforge.serving.rollout import reference_embedding
    from embedforge.stages import export

    onnx_dir = tmp_path / "onnx"
    export.run(tiny_model, chunks_dir, onnx_dir, ExportConfig(parity_samples=4))
    sig = inspect_onnx(onnx_dir / "model.onnx")
    assert [t.name for t in sig.inputs] == ["input_ids", "attention_mask"] and sig.dim == 32
    vdir = write_model_repository(onnx_dir, tmp_path / "repo", TritonConfig(), 1)
    conf = validate_config((vdir.parent / CONFIG_FILE).read_text())
    assert [i.name for i in conf.input] == ["text", "input_type"] and list(conf.output[0].dims) == [32]
    assert conf.parameters["query_prompt"].string_value == "query: "

    texts = ["what does the yield statement do", " ".join(["a long passage about generators"] * 60)]
    st = SentenceTransformer(str(tiny_model), device="cpu")
    for input_type, prompt_name in (("query", "query"), ("passage", "document")):
        got = reference_embedding(tmp_path / "repo", "embedforge_embedder", "1", texts, input_type)
        ref = st.encode(texts, prompt_name=prompt_name, normalize_embeddings=True)
        assert (got * ref).sum(axis=1).min() > 0.999

"""CPU encoding through ONNX Runtime (:mod:`embedforge.retrieval.onnx_encoder`) on the real all-MiniLM-L6-v2:
the same embeddings and rankings as PyTorch, one exported graph per model content, threads from the cores this
process may use, the console line naming the path, and PyTorch in one line where ONNX Runtime cannot encode."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TEXTS = ["x", "a much longer text " * 60, "short query about lambdas", "", "yield in a generator function " * 6,
         "ünïcödé text with accents", "break"] * 3


@pytest.fixture(scope="module")
def model(base_model):
    from embedforge.retrieval.encode import load_model

    return load_model(base_model, device="cpu")


def _onnx(tmp_path, **kw):
    from embedforge.config import EncodeConfig

    return EncodeConfig(encoder="onnx", cache_dir=str(tmp_path / "cache"), **kw)


def test_onnx_embeddings_match_pytorch(model, tmp_path):
    from embedforge.retrieval.encode import encode

    for kind in ("document", "query"):
        ref = encode(model, TEXTS, kind)
        for batch_size in (1, 5, 64):
            got = encode(model, TEXTS, kind, batch_size=batch_size, encoder=_onnx(tmp_path))
            assert got.shape == ref.shape and got.dtype == np.float32
            assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
            assert (got * ref).sum(1).min() >= 0.999


def test_onnx_ranks_the_eval_split_like_pytorch(chunks_dir, pairs_dir, tmp_path):
    """The evaluate stage's own ranking function, once per path: the same top hits for every eval query."""
    from embedforge.config import EncodeConfig, EvaluateConfig
    from embedforge.contracts import read_chunks, read_pairs
    from embedforge.retrieval.encode import load_model
    from embedforge.retrieval.ranking import rank_queries, retrieval_metrics

    model = load_model("all-MiniLM-L6-v2", device="cpu")
    chunks, pairs = read_chunks(chunks_dir), read_pairs(pairs_dir)
    runs = {}
    for encoder in ("torch", "onnx"):
        cfg = EvaluateConfig(encode=EncodeConfig(encoder=encoder, cache_dir=str(tmp_path)))
        runs[encoder] = rank_queries(model, chunks, pairs, cfg)
    (eval_set, torch_res), (_, onnx_res) = runs["torch"], runs["onnx"]
    assert torch_res.keys() == onnx_res.keys() and len(torch_res) >= 3
    for q in torch_res:
        t = sorted(torch_res[q].items(), key=lambda h: -h[1])[:10]
        o = sorted(onnx_res[q].items(), key=lambda h: -h[1])[:10]
        assert [d for d, _ in o] == [d for d, _ in t], q
        assert np.allclose([s for _, s in o], [s for _, s in t], atol=1e-3)
    assert retrieval_metrics(eval_set.qrels, onnx_res, [10]) == retrieval_metrics(eval_set.qrels, torch_res, [10])


def test_graph_is_exported_once_and_reused_by_content(model, base_model, tmp_path, caplog):
    """A second encoding, and the same model loaded from a copy of its folder, use the graph already cached."""
    from embedforge.retrieval.encode import encode, load_model

    cfg = _onnx(tmp_path)
    with caplog.at_level(logging.INFO, logger="embedforge"):
        first = encode(model, TEXTS, "document", encoder=cfg)
    graphs = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(graphs) == 1 and (graphs[0] / "model.onnx").is_file()
    assert any("exporting" in r.getMessage() for r in caplog.records)
    written = (graphs[0] / "model.onnx").stat().st_mtime_ns

    copy = shutil.copytree(base_model, tmp_path / "copy-of-the-model")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedforge"):
        again = encode(load_model(str(copy), device="cpu"), TEXTS, "document", encoder=cfg)
    assert not any("exporting" in r.getMessage() for r in caplog.records)
    assert any("reusing the ONNX graph" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "cache" / "onnx").iterdir()) == graphs
    assert (graphs[0] / "model.onnx").stat().st_mtime_ns == written
    np.testing.assert_array_equal(first, again)

    # a changed model (other weights in its folder) gets a graph of its own
    (copy / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "q: "}}))
    encode(load_model(str(copy), device="cpu"), TEXTS, "query", encoder=cfg)
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 2


def test_threads_come_from_the_cores_this_process_may_use(model, tmp_path):
    from embedforge.retrieval.onnx_encoder import (
        _cgroup_quota,
        available_cores,
        runtime_for,
    )

    affinity = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    assert available_cores() == (min(affinity, max(1, -(-quota // 1))) if quota else affinity)
    runtime = runtime_for(model, _onnx(tmp_path))
    assert runtime.threads == available_cores()
    assert runtime.session.get_session_options().intra_op_num_threads == available_cores()
    assert runtime_for(model, _onnx(tmp_path, threads=1)).session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize(("content", "cpus"), [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5)])
def test_cgroup_v2_quota_caps_the_cores(tmp_path, content, cpus):
    from embedforge.retrieval.onnx_encoder import _cgroup_quota

    (tmp_path / "cpu.max").write_text(content + "\n")
    assert _cgroup_quota(tmp_path) == cpus


def test_cgroup_v1_quota_caps_the_cores(tmp_path):
    from embedforge.retrieval.onnx_encoder import _cgroup_quota

    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(tmp_path) is None


def test_console_says_which_path_encodes(model, tmp_path, caplog):
    from embedforge.config import EncodeConfig
    from embedforge.retrieval.encode import encode
    from embedforge.retrieval.onnx_encoder import available_cores

    with caplog.at_level(logging.INFO, logger="embedforge"):
        encode(model, TEXTS, "document", show_progress=True, encoder=_onnx(tmp_path))
        encode(model, TEXTS, "document", show_progress=True, encoder=_onnx(tmp_path, int8=True))
        encode(model, TEXTS, "document", show_progress=True, encoder=EncodeConfig(encoder="torch"))
    lines = [r.getMessage() for r in caplog.records]
    n = available_cores()
    assert f"encoding 21 texts with ONNX Runtime (CPU, {n} threads, fp32)" in lines
    assert f"encoding 21 texts with ONNX Runtime (CPU, {n} threads, int8)" in lines
    assert "encoding 21 texts with PyTorch (cpu)" in lines


def test_int8_embeddings_stay_close(model, tmp_path):
    from embedforge.retrieval.encode import encode

    ref = encode(model, TEXTS, "document")
    got = encode(model, TEXTS, "document", encoder=_onnx(tmp_path, int8=True))
    assert len(list((tmp_path / "cache").rglob("model_int8.onnx"))) == 1
    cos = (got * ref).sum(1)
    assert 0.95 < cos.min() < 0.9999 and cos.mean() > 0.98  # close, but visibly not fp32


def test_a_model_the_graph_cannot_reproduce_falls_back_to_pytorch(base_model, tmp_path, caplog):
    """Pooling without the prompt's tokens and a prompt: the graph cannot tell them apart (the export stage
    refuses it), so PyTorch encodes, after one warning line."""
    from embedforge.retrieval.encode import encode, load_model

    folder = shutil.copytree(base_model, tmp_path / "prompted")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"document": "passage: "}}))
    model = load_model(str(folder), device="cpu")
    with caplog.at_level(logging.INFO, logger="embedforge"):
        got = encode(model, TEXTS, "document", show_progress=True, encoder=_onnx(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "include_prompt" in warnings[0] and "PyTorch encodes instead" in warnings[0]
    assert "encoding 21 texts with PyTorch (cpu)" in [r.getMessage() for r in caplog.records]
    np.testing.assert_allclose(got, encode(model, TEXTS, "document"), atol=1e-6)
    assert not (tmp_path / "cache" / "onnx").exists()


def test_without_onnxruntime_pytorch_encodes(base_model, tmp_path):
    """A process where onnxruntime cannot be imported (as in an image without it): encoder=auto encodes with
    PyTorch and says why in one line."""
    script = textwrap.dedent(f"""
        import logging, sys
        sys.modules["onnxruntime"] = None  # import onnxruntime now raises ImportError, as when it is not installed
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
        from embedforge.config import EncodeConfig
        from embedforge.retrieval.encode import encode, load_model
        model = load_model({str(base_model)!r}, device="cpu")
        emb = encode(model, ["a text", "another text"], "document", show_progress=True,
                     encoder=EncodeConfig(cache_dir={str(tmp_path)!r}))
        print("shape", emb.shape)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [ln for ln in lines if "onnxruntime is not importable" in ln and "PyTorch encodes instead" in ln]
    assert "INFO encoding 2 texts with PyTorch (cpu)" in lines
    assert "shape (2, 384)" in lines
    assert not (tmp_path / "onnx").exists()


def test_corpus_embeddings_are_computed_once_per_model_and_texts(model, base_model, tmp_path, caplog):
    """The same texts from the same model content (here: a copy of its folder, as a champion downloaded again
    is) are read back, not encoded again; other texts are encoded."""
    from embedforge.retrieval.encode import encode, load_model

    cfg = _onnx(tmp_path)
    first = encode(model, TEXTS, "document", show_progress=True, encoder=cfg)
    stored = list((tmp_path / "cache" / "embeddings").glob("*.npy"))
    assert len(stored) == 1
    copy = load_model(str(shutil.copytree(base_model, tmp_path / "champion")), device="cpu")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedforge"):
        again = encode(copy, TEXTS, "document", show_progress=True, encoder=cfg)
        encode(copy, TEXTS, "query", show_progress=True, encoder=cfg)
        encode(copy, TEXTS[:-1], "document", show_progress=True, encoder=cfg)
    lines = [r.getMessage() for r in caplog.records]
    # all-MiniLM-L6-v2 has no prompts: its queries are the same model input as its documents, so reused too
    assert lines.count("reusing the embeddings of 21 texts computed before by this model (ONNX Runtime, fp32)") == 2
    assert "encoding 20 texts with ONNX Runtime (CPU, " in "\n".join(lines)
    np.testing.assert_array_equal(first, again)
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 2


def test_embedding_cache_keeps_within_its_size(model, tmp_path):
    from embedforge.retrieval.encode import encode

    encode(model, TEXTS, "document", show_progress=True, encoder=_onnx(tmp_path, embedding_cache_mb=0))
    assert not list((tmp_path / "cache").rglob("*.npy"))
    cfg = _onnx(tmp_path, embedding_cache_mb=1)  # 1 MB holds 21 x 384 floats (32 kB) about 30 times
    for i in range(40):
        encode(model, [f"text number {i}"] + TEXTS, "document", show_progress=True, encoder=cfg)
    kept = list((tmp_path / "cache" / "embeddings").glob("*.npy"))
    assert 20 < len(kept) < 40 and sum(p.stat().st_size for p in kept) <= 2**20


def test_auto_exports_only_for_an_encoding_that_repays_it(model, tmp_path, caplog):
    """encoder=auto: a few texts are not worth an export (PyTorch encodes them), but once the graph exists they
    run on it too."""
    from embedforge.config import EncodeConfig
    from embedforge.retrieval.encode import encode

    auto = EncodeConfig(cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="embedforge"):
        encode(model, TEXTS, "document", show_progress=True, encoder=auto)
    assert "encoding 21 texts with PyTorch (cpu)" in [r.getMessage() for r in caplog.records]
    assert not (tmp_path / "cache" / "onnx").exists()

    encode(model, TEXTS[:2], "document", encoder=_onnx(tmp_path))  # encoder=onnx exports whatever the size
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedforge"):
        encode(model, TEXTS, "document", show_progress=True, encoder=auto)
    assert any(r.getMessage().startswith("encoding 21 texts with ONNX Runtime") for r in caplog.records)

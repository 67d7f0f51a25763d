"""The MLflow pyfunc of a version (embedforge.registry.pyfunc, saved by embedforge.registry.model): a real MLflow
Model over a real ONNX embedder, loaded back with ``mlflow.pyfunc.load_model``; its ``dimensions`` param returns
the first N dimensions renormalised, and it lists the Matryoshka dimensions recorded with the export."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from embedforge.retrieval.dimensions import record_trained_dims

pytest_plugins = ["conftest_mlflow"]

TEXTS = ["rotate the signing keys", "a longer passage about key rotation schedules", "x"]


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory, saved_base_model, tiny_onnx_dir):
    import mlflow

    from embedforge.registry.model import save_mlflow_model

    root = tmp_path_factory.mktemp("pyfunc")
    onnx_dir = root / "onnx"
    shutil.copytree(tiny_onnx_dir, onnx_dir)
    record_trained_dims(onnx_dir, [8, 4])
    save_mlflow_model(saved_base_model, onnx_dir, root / "model", {"run_id": "r"})
    return mlflow.pyfunc.load_model(str(root / "model"))


def test_dimensions_returns_the_prefix_renormalised(pyfunc):
    data = pd.DataFrame({"text": TEXTS})
    full = pyfunc.predict(data)
    assert full.shape == (3, 8)
    for n in (4, 3, 1):
        short = pyfunc.predict(data, params={"dimensions": n, "prompt_name": "query"})
        as_query = pyfunc.predict(data, params={"prompt_name": "query"})
        assert short.shape == (3, n) and short.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(short, as_query[:, :n] / np.linalg.norm(as_query[:, :n], axis=1, keepdims=True),
                                   atol=1e-6)
    np.testing.assert_array_equal(pyfunc.predict(data, params={"dimensions": 8}), full)
    np.testing.assert_array_equal(pyfunc.predict(data, params={"dimensions": 0}), full)


def test_dimensions_beyond_the_width_name_the_trained_ones(pyfunc):
    with pytest.raises(Exception, match=r"dimensions 9: 0 \(all\) or 1\.\.8; the model was trained for \[8, 4\]"):
        pyfunc.predict(pd.DataFrame({"text": TEXTS}), params={"dimensions": 9})


def test_the_signature_declares_the_param_and_holds_for_every_width(pyfunc):
    """``dimensions`` changes the output's width, so the signature leaves it open (true of every call) and the
    model's metadata names the full width."""
    params = {p.name: p for p in pyfunc.metadata.signature.params.params}
    assert params["dimensions"].default == 0 and params["prompt_name"].default == ""
    (output,) = pyfunc.metadata.signature.outputs.inputs
    assert output.shape == (-1, -1) and output.type == np.dtype("float32")
    assert pyfunc.metadata.metadata["embedding_dim"] == "8" and pyfunc.metadata.metadata["run_id"] == "r"

"""The registered version as a real MLflow Model (pyfunc), built from the export and train outputs.

:func:`save_mlflow_model` writes a folder that is both an MLflow Model (``MLmodel``, pyfunc flavour with
:mod:`embedforge.registry.pyfunc` logged as code, signature, input example, the ONNX file + tokenizer as its
``onnx`` artifact) and the fine-tuned sentence-transformers folder; :mod:`embedforge.stages.register` logs it as the
run's ``model/`` artifact, the version's source.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from embedforge.errors import InputError


def _onnx_output_dim(onnx_path: Path) -> int:
    """The static embedding width of the ONNX graph's first output, or -1 when it is symbolic."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else -1


def save_mlflow_model(model_dir: Path, onnx_dir: Path, dst: Path, metadata: dict[str, str]) -> Path:
    """Write ``dst`` as an MLflow Model (pyfunc, :mod:`embedforge.registry.pyfunc` as code) that is ALSO the
    sentence-transformers folder, then load it back and embed the input example as a self-check.

    * pyfunc: signature ``text`` (string column) -> float32 ``(-1, -1)``, params ``prompt_name`` and
      ``dimensions`` (0: all; N: the first N, renormalised). The output's width is left open in the signature
      because ``dimensions`` changes it; the full width is the model's metadata ``embedding_dim``. The input
      example; the ONNX file and tokenizer as its ``onnx`` artifact (``artifacts/onnx/``); requirements pinned
      to the versions installed here.
    * the sentence-transformers files sit beside ``MLmodel``, so ``SentenceTransformer(<downloaded version>)``
      still loads the fine-tuned model (the gate re-evaluates champions that way).

    Raises:
        InputError: The saved model cannot be loaded or does not embed the example (names the problem).
    """
    from importlib.metadata import version

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    dim = _onnx_output_dim(onnx_dir / "model.onnx")
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1))]),
        params=ParamSchema([ParamSpec("prompt_name", "string", ""), ParamSpec("dimensions", "long", 0)]),
    )
    example = pd.DataFrame({"text": ["How do I rotate the signing keys?", "Keys are rotated every 90 days."]})
    reqs = [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "onnxruntime", "transformers", "numpy", "pandas")]
    with warnings.catch_warnings():  # "add type hints to predict": the signature above is explicit on purpose
        warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
        from embedforge.registry import pyfunc as mlflow_pyfunc

        mlflow.pyfunc.save_model(
            path=str(dst), python_model=mlflow_pyfunc.__file__,
            artifacts={mlflow_pyfunc.ONNX_ARTIFACT: str(onnx_dir)},
            signature=signature, input_example=example, pip_requirements=reqs,
            metadata={**metadata, "embedding_dim": str(dim)},
        )
    for item in model_dir.iterdir():  # the sentence-transformers layout beside MLmodel (no name clashes)
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            emb = mlflow.pyfunc.load_model(str(dst)).predict(example)
    except Exception as exc:  # noqa: BLE001 - any failure here means the version would not load for users
        raise InputError(f"the MLflow Model built from {onnx_dir} does not load/predict: {exc}") from None
    if emb.shape[0] != len(example) or (dim > 0 and emb.shape[1] != dim):
        raise InputError(f"the MLflow Model built from {onnx_dir} returned shape {emb.shape}, expected (2, {dim})")
    return dst


__all__ = ["save_mlflow_model"]

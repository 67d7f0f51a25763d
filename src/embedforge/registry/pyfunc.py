"""The MLflow pyfunc model of a registered embedforge version: text in, L2-normalised embeddings out, via ONNX.

This file is logged *as code* with each version (MLflow "models from code": ``python_model=<this file>``), so
loading a version needs only ``mlflow``, ``onnxruntime``, ``transformers``, ``numpy`` and ``pandas`` — not
embedforge — and nothing is unpickled. It runs the very ``model.onnx`` (pooling and normalisation in the graph)
and tokenizer that Triton serves, both shipped as the model's ``onnx`` artifact, so what
``mlflow.pyfunc.load_model("models:/<name>/<version>").predict(...)`` returns is what production returns.

Input: a DataFrame with a ``text`` column (or a list of strings). Param ``prompt_name``: ``""`` (none),
``"query"`` or ``"document"``, the prefixes saved with the model (``config_sentence_transformers.json``). Param
``dimensions``: 0 (the default) for the full width, else 1..width: the first N dimensions renormalised to unit
length, as the OpenAI endpoint's ``dimensions`` (the Matryoshka dimensions the model was trained with, listed under
``matryoshka_dims`` in that file and in :attr:`OnnxEmbedder.trained_dims`, are the ones that keep quality).
Output: a float32 array ``(rows, dim)`` (``(rows, dimensions)``).

embedforge itself never imports this module (the ``set_model`` call at the bottom is how MLflow finds the
model when it executes the file); ``registry`` passes its path to ``mlflow.pyfunc.save_model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np

ONNX_ARTIFACT = "onnx"  # the artifacts key (and folder) holding model.onnx + tokenizer files
MAX_LENGTH = 512


class OnnxEmbedder(mlflow.pyfunc.PythonModel):
    """Tokenize with the shipped tokenizer, run ``model.onnx`` with onnxruntime on CPU, return its output."""

    def load_context(self, context) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(context.artifacts[ONNX_ARTIFACT])
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        st_config = folder / "config_sentence_transformers.json"
        st = json.loads(st_config.read_text()) if st_config.is_file() else {}
        self.prompts = st.get("prompts", {})
        self.trained_dims = [int(d) for d in st.get("matryoshka_dims", [])]
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", MAX_LENGTH) or MAX_LENGTH), MAX_LENGTH)

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
        prompt_name = (params or {}).get("prompt_name") or ""
        if prompt_name and prompt_name not in self.prompts:
            raise ValueError(f"prompt_name {prompt_name!r} is not one of the model's prompts {sorted(self.prompts)}")
        prefix = self.prompts.get(prompt_name, "") if prompt_name else ""
        enc = self.tokenizer([prefix + str(t) for t in texts], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="np")
        feeds = {name: enc[name].astype(np.int64) for name in self.input_names}
        out = np.asarray(self.session.run([self.output_name], feeds)[0], dtype=np.float32)
        dimensions = int((params or {}).get("dimensions") or 0)
        if not 0 <= dimensions <= out.shape[1]:
            raise ValueError(f"dimensions {dimensions}: 0 (all) or 1..{out.shape[1]}; the model was trained for "
                             f"{self.trained_dims or [out.shape[1]]}")
        if dimensions in (0, out.shape[1]):
            return out
        head = out[:, :dimensions]  # a prefix of a unit vector: renormalised, as the model was trained to use it
        return head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), np.finfo(np.float32).tiny)


mlflow.models.set_model(OnnxEmbedder())

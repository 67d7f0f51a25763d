"""Matryoshka dimensions: the prefix lengths a model was trained to serve, and how a prefix becomes an embedding.

A model trained with ``train.matryoshka_dims`` (:class:`embedforge.stages.train.losses.MatryoshkaLoss`) makes
embeddings whose first ``d`` dimensions, renormalised to unit length, are an embedding of their own for each trained
``d``. :func:`truncate` is that operation (evaluation and serving apply the same one, so what evaluate scores at a
dimension is what a ``dimensions`` request returns); any ``d`` up to the width works, the trained ones work best.

The trained dimensions are recorded in the model folder's ``config_sentence_transformers.json`` under
:data:`DIMS_KEY` (sentence-transformers ignores keys it does not know, and export copies the file next to
``model.onnx``), so every later stage and the servers read them from the model itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Key of the trained dimensions in ``config_sentence_transformers.json``.
DIMS_KEY = "matryoshka_dims"
_ST_CONFIG = "config_sentence_transformers.json"


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` columns of ``vectors`` (rows), each row renormalised to unit length; float32. A zero row
    stays zero."""
    head = np.asarray(vectors, dtype=np.float32)[:, :dim]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return head / np.where(norms > 0, norms, 1.0)


def record_trained_dims(model_dir: str | Path, dims: Sequence[int]) -> None:
    """Write ``dims`` into ``model_dir``'s ``config_sentence_transformers.json`` (kept keys: the rest of it); no
    dimensions: the key is removed."""
    path = Path(model_dir) / _ST_CONFIG
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if dims:
        config[DIMS_KEY] = [int(d) for d in dims]
    else:
        config.pop(DIMS_KEY, None)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def trained_dims(model_dir: str | Path) -> list[int]:
    """The Matryoshka dimensions ``model_dir`` (a sentence-transformers or export folder) was trained with; [] for
    a model trained without (or a folder without the file)."""
    path = Path(model_dir) / _ST_CONFIG
    if not path.is_file():
        return []
    return [int(d) for d in json.loads(path.read_text(encoding="utf-8")).get(DIMS_KEY, [])]

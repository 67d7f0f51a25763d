"""Embeddings already computed, kept by what determines them, so no stage or later run computes them twice.

A corpus-scale encoding through ONNX Runtime (:mod:`embedforge.retrieval.onnx_encoder`) is stored as
``<cache_dir>/embeddings/<key>.npy``, where ``key`` hashes the graph that computed it (itself keyed by the
model folder's content and how it was loaded), its precision, the prompt, the maximum length and every text in
order. Whatever asks for the same texts from the same model again reads the file instead: the base model's
evaluation on an ``--eval-beir`` collection in every later run into the same ``--out``, and the gate's champion
when it is a model an earlier run evaluated on the same collection (its content, not its registry version, is
the key). Files are written whole (scratch name, then rename); the oldest are removed once the folder holds more
than ``EncodeConfig.embedding_cache_mb``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FOLDER = "embeddings"


def cache_key(graph: Path, precision: str, prompt: str, max_length: int, texts: Sequence[str]) -> str:
    """What determines the embeddings of ``texts``: the graph (its cache folder names the model content), the
    precision, the prompt, the maximum length and the texts themselves, in order."""
    h = hashlib.sha256()
    for part in (graph.parent.name, graph.name, precision, prompt, str(max_length), str(len(texts))):
        h.update(part.encode() + b"\0")
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:40]


def load(root: Path, key: str, n: int) -> np.ndarray | None:
    """The stored embeddings of ``key`` (``n`` rows), or None."""
    path = root / FOLDER / f"{key}.npy"
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if emb.ndim != 2 or emb.shape[0] != n or emb.dtype != np.float32:
        return None
    os.utime(path)  # recently used: pruned last
    return emb


def store(root: Path, key: str, emb: np.ndarray, limit_mb: int) -> None:
    """Keep ``emb`` under ``key``, then remove the least recently used files beyond ``limit_mb`` MB (0: keep
    nothing)."""
    if limit_mb <= 0 or emb.nbytes > limit_mb * 2**20:
        return
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.npy"
    np.save(tmp, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
    os.replace(tmp, folder / f"{key}.npy")
    files = sorted((p for p in folder.glob("*.npy") if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    total = 0
    for p in files:
        total += p.stat().st_size
        if total > limit_mb * 2**20:
            p.unlink(missing_ok=True)

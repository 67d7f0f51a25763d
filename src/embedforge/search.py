"""Exact inner-product nearest-neighbour search with FAISS (GPU when faiss-gpu and a GPU are present).

Embeddings are L2-normalised (see :mod:`embedforge.encode`), so inner product = cosine similarity.
Used by mining (candidates for hard negatives), evaluation and the gate's champion re-evaluation.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def build_index(embeddings: np.ndarray, use_gpu: bool = True):
    """A flat inner-product index over ``embeddings`` (float32, (n, dim))."""
    import faiss

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(emb.shape[1])
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        log.info("faiss: searching on GPU")
    index.add(emb)
    return index


def top_k(
    index, queries: np.ndarray, k: int, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and row ids of the ``k`` nearest rows for each query, best first (ids -1 pad when k > n)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), batch_size):
        s, i = index.search(q[start : start + batch_size], k)
        scores[start : start + batch_size] = s
        ids[start : start + batch_size] = i
    return scores, ids

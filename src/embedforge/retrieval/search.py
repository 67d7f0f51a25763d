"""Exact inner-product nearest-neighbour search: FAISS, or blocked torch matmul on the GPU without faiss-gpu.

Embeddings are L2-normalised (see :mod:`embedforge.retrieval.encode`), so inner product = cosine similarity.
Used by mining (candidates for hard negatives), evaluation and the gate's champion re-evaluation.

Which index :func:`build_index` returns (``use_gpu`` = ``mine.use_gpu`` / evaluation's default):

* faiss-gpu installed and a GPU visible: FAISS's flat index on the GPU;
* a GPU visible but a CPU-only faiss (the PyPI wheel) or none: :class:`TorchFlatIndex` on the GPU — the same exact
  search as ``faiss.IndexFlatIP`` (fp32 scores, best first), in query x corpus blocks so that a corpus of millions
  of chunks never needs one (queries x corpus) score matrix;
* otherwise FAISS's flat index on the CPU (:class:`TorchFlatIndex` on the CPU where faiss is not installed).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Score-matrix elements per block (fp32): 2^28 = 1 GiB of scores at a time, whatever the corpus.
BLOCK_ELEMENTS = 1 << 28


class TorchFlatIndex:
    """Exact inner-product search with torch: the corpus on ``device``, scored block by block with ``top-k`` merging.

    Same interface as the part of a FAISS index that :func:`top_k` uses (``ntotal``, ``search``); results equal
    ``faiss.IndexFlatIP``'s up to the order of exactly tied scores."""

    def __init__(self, embeddings: np.ndarray, device: str = "cuda", block_elements: int = BLOCK_ELEMENTS):
        import torch

        self.device = torch.device(device)
        self.emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(self.device)
        self.ntotal = len(self.emb)
        self.block_elements = block_elements

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids of the ``k`` best rows per query (ids -1 and scores -inf pad when ``k`` > ntotal)."""
        import torch

        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        n, kk = self.ntotal, min(k, self.ntotal)
        doc_block = max(kk, min(n, self.block_elements // max(1, min(len(q_all), 1024))))
        q_block = max(1, self.block_elements // doc_block)
        scores = np.full((len(q_all), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q_all), k), -1, dtype=np.int64)
        with torch.no_grad():
            for qs in range(0, len(q_all), q_block):
                q = q_all[qs : qs + q_block]
                best_s = best_i = None
                for ds in range(0, n, doc_block):
                    s = q @ self.emb[ds : ds + doc_block].T
                    bs, bi = torch.topk(s, min(kk, s.shape[1]), dim=1)
                    bi = bi + ds
                    if best_s is not None:  # merge this block's best with the best so far
                        bs, pos = torch.topk(torch.cat([best_s, bs], 1), kk, dim=1)
                        bi = torch.gather(torch.cat([best_i, bi], 1), 1, pos)
                    best_s, best_i = bs, bi
                if best_s is not None:
                    scores[qs : qs + len(q), :kk] = best_s.cpu().numpy()
                    ids[qs : qs + len(q), :kk] = best_i.cpu().numpy()
        return scores, ids


def _cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def build_index(embeddings: np.ndarray, use_gpu: bool = True):
    """An exact inner-product index over ``embeddings`` (float32, (n, dim)): see the module docstring for which."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    try:
        import faiss
    except ImportError:
        faiss = None
    gpu = use_gpu and _cuda()
    if faiss is not None and gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(emb.shape[1]))
        index.add(emb)
        log.info("search: faiss on the GPU")
        return index
    if gpu or faiss is None:
        log.info("search: exact torch matmul on the %s", "GPU" if gpu else "CPU (faiss not installed)")
        return TorchFlatIndex(emb, device="cuda" if gpu else "cpu")
    index = faiss.IndexFlatIP(emb.shape[1])
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

"""Exact search: the torch path (GPU without faiss-gpu) returns what FAISS's flat index returns."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest

from embedforge.retrieval.search import TorchFlatIndex, build_index, top_k


def _unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_elements", [1 << 28, 700])  # one block; many query and corpus blocks merged
def test_torch_blocks_match_faiss_flat_index(block_elements):
    rng = np.random.default_rng(0)
    corpus, queries = _unit(rng, 2_000), _unit(rng, 300)
    ref = faiss.IndexFlatIP(corpus.shape[1])
    ref.add(corpus)
    want_s, want_i = top_k(ref, queries, 25)
    got_s, got_i = top_k(TorchFlatIndex(corpus, device="cpu", block_elements=block_elements), queries, 25)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-5)
    assert (np.diff(got_s, axis=1) <= 0).all()


def test_more_neighbours_asked_than_rows():
    rng = np.random.default_rng(1)
    corpus, queries = _unit(rng, 5), _unit(rng, 3)
    s, i = TorchFlatIndex(corpus, device="cpu").search(queries, 8)
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()
    assert sorted(i[0, :5]) == [0, 1, 2, 3, 4]


def test_without_faiss_the_torch_index_serves(monkeypatch):
    rng = np.random.default_rng(2)
    corpus, queries = _unit(rng, 500), _unit(rng, 40)
    with_faiss = top_k(build_index(corpus), queries, 10)
    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" now raises ImportError
    index = build_index(corpus)
    assert isinstance(index, TorchFlatIndex)
    got = top_k(index, queries, 10)
    np.testing.assert_array_equal(got[1], with_faiss[1])
    np.testing.assert_allclose(got[0], with_faiss[0], atol=1e-5)

"""The token-budget encoder (:func:`encode_token_batched`) against ``SentenceTransformer.encode`` on the real
all-MiniLM-L6-v2: the same embeddings, in the order of the texts, whatever the budget cuts."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["x", "a much longer text " * 40, "short query about lambdas", "", "yield in a generator function " * 6,
         "ünïcödé text with accents", "break"] * 3


@pytest.fixture(scope="module")
def model(base_model):
    from embedforge.retrieval.encode import load_model

    return load_model(base_model, device="cpu")


@pytest.mark.parametrize("budget", [1, 64, 4096])
def test_token_batched_matches_sentence_transformers(model, budget):
    from embedforge.retrieval.encode import encode, encode_token_batched

    ref = encode(model, TEXTS, "document")
    got = encode_token_batched(model, TEXTS, "document", budget)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * ref).sum(1).min() > 0.99999


def test_encode_takes_the_token_budget_when_asked(model):
    from embedforge.retrieval.encode import encode

    plain = encode(model, TEXTS, "query")
    budgeted = encode(model, TEXTS, "query", token_budget=256)
    assert (plain * budgeted).sum(1).min() > 0.99999

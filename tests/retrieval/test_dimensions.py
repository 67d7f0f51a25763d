"""Matryoshka dimensions (embedforge.retrieval.dimensions): the prefix of a real embedding renormalised is what
sentence-transformers' own ``truncate_dim`` encoding returns, and the trained dimensions recorded in a real model
folder are read back without disturbing sentence-transformers' loading of it."""

from __future__ import annotations

import json

import numpy as np

from embedforge.retrieval.dimensions import record_trained_dims, trained_dims, truncate

TEXTS = ["how do I stop a loop before it is finished", "The break statement ends the innermost loop.", "x"]


def test_truncate_is_sentence_transformers_truncate_dim(base_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base_model, device="cpu")
    full = model.encode(TEXTS, normalize_embeddings=True)
    for dim in (128, 64, 1):
        want = model.encode(TEXTS, normalize_embeddings=True, truncate_dim=dim)
        got = truncate(full, dim)
        assert got.shape == (3, dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert not truncate(np.zeros((1, 4)), 2).any()  # a zero row stays zero, no NaN


def test_trained_dims_round_trip_in_a_real_model_folder(tmp_path, base_model):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "model"
    SentenceTransformer(base_model, device="cpu").save(str(folder))
    assert trained_dims(folder) == [] and trained_dims(tmp_path / "nowhere") == []
    before = json.loads((folder / "config_sentence_transformers.json").read_text())
    record_trained_dims(folder, [384, 128, 64])
    assert trained_dims(folder) == [384, 128, 64]
    after = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert after == {**before, "matryoshka_dims": [384, 128, 64]}
    loaded = SentenceTransformer(str(folder), device="cpu")  # the extra key does not disturb loading
    assert loaded.get_embedding_dimension() == 384
    record_trained_dims(folder, [])
    assert trained_dims(folder) == [] and json.loads((folder / "config_sentence_transformers.json").read_text()) == before

"""Token cache: what it pads must be exactly what ``model.preprocess`` returns, for the real base model's tokenizer
(prompt included, truncation at ``max_seq_length``), and the token-budget grouping must cover every text once."""

from __future__ import annotations

import pytest
import torch

from embedforge.stages.train.tokens import TokenCache, micro_batches

TEXTS = [
    "short",
    "How does the assert statement behave when Python runs with -O?",
    "A much longer passage about optimisation flags. " * 40,  # beyond max_seq_length: truncated
    "",
    "Unicode: naïve café — 東京",
]


@pytest.fixture(scope="module")
def model(base_model):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(base_model, device="cpu")
    m.max_seq_length = 64
    return m


@pytest.mark.parametrize("prompt", [None, "query: "])
def test_features_equal_preprocess_for_any_subset_and_order(model, prompt):
    cache = TokenCache(model, prompt, chunk=2)  # several preprocess calls while filling
    cache.add(TEXTS)
    assert len(cache) == len(TEXTS) and cache.exact
    for subset in (TEXTS, TEXTS[::-1], TEXTS[1:2], [TEXTS[0], TEXTS[3]]):
        got = cache.features(subset, "cpu")
        want = model.preprocess(subset, prompt=prompt)
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key


def test_lengths_count_prompt_and_special_tokens_and_truncate(model):
    plain, prompted = TokenCache(model, None), TokenCache(model, "query: ")
    assert plain.length("short") == 3  # [CLS] short [SEP]
    assert prompted.length("short") == plain.length("short") + 2  # "query" ":"
    assert plain.length(TEXTS[2]) == 64  # truncated at max_seq_length


def test_new_texts_are_tokenised_on_demand(model):
    cache = TokenCache(model, None)
    got = cache.features(["never added before", "short"], "cpu")
    assert torch.equal(got["input_ids"], model.preprocess(["never added before", "short"])["input_ids"])
    assert len(cache) == 2


def test_micro_batches_respect_the_budget_and_cover_every_item_once():
    lengths = [5, 100, 7, 7, 64, 3, 250, 12]
    groups = micro_batches(lengths, max_tokens=128)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 128
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)  # shortest first
    assert [250] in [[lengths[i] for i in g] for g in groups]  # over budget alone: its own group
    assert micro_batches([], 128) == []
    assert len(micro_batches(lengths, max_tokens=10_000)) == 1

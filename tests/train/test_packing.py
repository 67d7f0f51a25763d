"""Sequence packing (embedforge.stages.train.packing): packed forwards give the padded forward's embeddings and gradients.

Real models: the bundled all-MiniLM-L6-v2 (BERT, mean pooling) and tiny random-init Llama (causal, last-token
pooling) and Qwen3 (mean pooling without the prompt) folders with MiniLM's tokenizer, made here. Each is run
through :func:`embedforge.stages.train.step.embed` twice — packing off, then on — on texts of very different lengths,
with small rows so that texts share rows and a micro-batch spans several rows.
"""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import (
    Normalize,
    Pooling,
    Transformer,
)
from transformers import AutoConfig, AutoModel, AutoTokenizer

from embedforge.config import PromptsConfig, TrainConfig
from embedforge.errors import ConfigError
from embedforge.retrieval.encode import resolve_model_path
from embedforge.stages.train import packing
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.setup import make_stepper
from embedforge.stages.train.step import embed
from embedforge.stages.train.tokens import TokenCache

TEXTS = [
    "short",
    "A considerably longer passage about packing several texts into one row, with positions restarting per text.",
    "Mid-length sentence on contrastive training.",
    "x y",
    "Embeddings of packed rows must equal those of padded rows, token for token, up to float rounding.",
    "Another passage, " * 12,
    "tail",
]


def tiny_folder(tmp_path, model_type: str, pooling: str, include_prompt: bool = True, **dims) -> str:
    """A sentence-transformers folder: random-init ``model_type`` (seed 0) with MiniLM's tokenizer + Pooling +
    Normalize."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **dims)
    torch.manual_seed(0)
    hf = tmp_path / f"{model_type}_hf"
    AutoModel.from_config(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    body = Transformer(str(hf), max_seq_length=64)
    st = SentenceTransformer(modules=[body, Pooling(32, pooling, include_prompt=include_prompt), Normalize()],
                             device="cpu")
    st.save(str(tmp_path / model_type))
    return str(tmp_path / model_type)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packing")
    return {
        "minilm": (resolve_model_path("all-MiniLM-L6-v2"), None),
        "llama": (tiny_folder(tmp, "llama", "lasttoken", num_key_value_heads=2), None),
        "qwen3": (tiny_folder(tmp, "qwen3", "mean", include_prompt=False, num_key_value_heads=2, head_dim=8),
                  "query: "),
    }


def test_pack_rows_places_every_text_once_within_the_row_budget():
    lengths = [5, 300, 40, 40, 7, 120, 1, 64]
    rows = packing.pack_rows(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert [1] in rows  # longer than a row: a row of its own
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows if row != [1])
    assert len(rows) == 4  # 300 | 120+7+1 | 64+40+5 | 40 (first-fit decreasing)


@pytest.mark.parametrize("name", ["minilm", "llama", "qwen3"])
def test_packed_embeddings_and_gradients_equal_padded(models, name):
    path, prompt = models[name]
    model = SentenceTransformer(path, device="cpu")
    model.eval()  # no dropout: both forwards must see the same network
    packer = packing.probe(model, row_tokens=48)  # small rows: texts share rows, a micro-batch spans several
    assert packer is not None
    assert packer.strategy == ("position_ids" if name in ("llama", "qwen3") else "block_mask")
    cache = TokenCache(model, prompt)
    dim = model[1].get_embedding_dimension()
    weights = torch.randn(len(TEXTS), dim, generator=torch.Generator().manual_seed(1))
    results = []
    for use in (None, packer):
        packing._PACKERS.pop(model, None)
        if use is not None:
            packing._PACKERS[model] = use
        model.zero_grad(set_to_none=True)
        emb = embed(model, TEXTS, prompt, max_tokens=256, cache=cache)
        (emb * weights).sum().backward()
        results.append((emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded, grads_padded), (packed, grads_packed) = results
    assert torch.allclose(packed, padded, atol=1e-5), (packed - padded).abs().max()
    assert grads_packed.keys() == grads_padded.keys() and len(grads_packed) > 5
    for n, g in grads_padded.items():
        assert torch.allclose(grads_packed[n], g, atol=1e-5, rtol=1e-3), (n, (grads_packed[n] - g).abs().max())


def test_enable_follows_train_packing(models):
    model = SentenceTransformer(models["llama"][0], device="cpu")
    assert packing.enable(model, "off") is None and packing.packer_of(model) is None
    assert packing.enable(model, "auto") is None  # auto packs on CUDA only
    cfg = TrainConfig(packing="on", device="cpu")
    make_stepper(model, cfg, PromptsConfig(), steps=1, dist=DistContext())
    assert packing.packer_of(model) == packing.Packer("position_ids")


def test_packing_on_refuses_a_model_that_mixes_packed_texts(tmp_path):
    """Eager attention adds a boolean 4-D mask instead of applying it, so packed BERT texts would attend to each
    other: the probe sees different embeddings and ``on`` says so."""
    model = SentenceTransformer(tiny_folder(tmp_path, "bert", "cls"), device="cpu",
                                model_kwargs={"attn_implementation": "eager"})
    assert packing.probe(model) is None
    with pytest.raises(ConfigError, match="train.packing"):
        packing.enable(model, "on")

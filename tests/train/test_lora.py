"""LoRA fine-tuning (embedforge.stages.train.lora) on the real MiniLM: only the adapters train, and the saved folder is a
plain sentence-transformers model (no peft keys or files) that reproduces the embeddings of the trained model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts.positives import positives_by_anchor
from embedforge.stages import train
from embedforge.stages.train.batching import collate
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.lora import add_adapters, has_adapters, merge_adapters
from embedforge.stages.train.setup import (
    load_for_training,
    make_stepper,
    seed_everything,
)
from embedforge.stages.train.step import embed

PROMPTS = PromptsConfig(query="query: ", document="passage: ")
LORA = {"enabled": True, "r": 4, "alpha": 8}


def test_lora_trains_only_adapters_and_saves_a_plain_model(tmp_path, mined_dir, base_model):
    from sentence_transformers import SentenceTransformer

    cfg = TrainConfig(max_seq_length=32, device="cpu", learning_rate=1e-3, lora=LORA)
    model = load_for_training(base_model, cfg, PROMPTS)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    seed_everything(cfg.seed)  # the adapters' initialisation and the dropout: not whatever earlier tests left
    add_adapters(model, cfg.lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) < 0.05 * sum(
        v.numel() for v in base.values())

    rows = contracts.read_train_examples(mined_dir)[:8]
    batch = collate(rows, list(range(8)), positives_by_anchor(rows))
    stepper = make_stepper(model, cfg, PROMPTS, steps=3, dist=DistContext())
    model.train()
    losses = [float(stepper.step(batch)) for _ in range(3)]
    assert losses[-1] < losses[0]
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()
              if "lora_" not in n}
    assert frozen.keys() == base.keys()
    assert all(torch.equal(p, base[n]) for n, p in frozen.items())  # the base weights did not move

    model.eval()
    texts = [r.anchor for r in rows]
    with torch.no_grad():
        trained = embed(model, texts, PROMPTS.query)
    merge_adapters(model)
    assert not has_adapters(model)
    model.save(str(tmp_path / "model"))
    saved = load_file(tmp_path / "model" / "model.safetensors")
    base = {k.split(".", 2)[2]: v for k, v in base.items()}  # "0.<model attribute>.<HF key>" -> HF key
    assert saved.keys() == base.keys()  # exactly the base model's weights: no lora_A/B, no base_layer
    assert not list((tmp_path / "model").rglob("adapter_config.json"))
    changed = [k for k, v in base.items() if not torch.equal(saved[k], v)]
    assert changed and all(k.endswith("weight") for k in changed)  # the merge moved the adapted linear weights

    plain = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    again = plain.encode(texts, prompt_name="query", normalize_embeddings=True, convert_to_tensor=True)
    torch.testing.assert_close(again, trained, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("extra", [{}, {"gradient_checkpointing": True, "weights_dtype": "bf16"}])
def test_train_run_with_lora_saves_a_plain_model(tmp_path, mined_dir, base_model, extra):
    """The train stage with LoRA (and with the memory options on top): trains, and saves a plain model."""
    from sentence_transformers import SentenceTransformer

    cfg = TrainConfig(epochs=1, batch_size=8, max_seq_length=32, device="cpu", learning_rate=1e-3, base_weight=0.0,
                      lora=LORA, **extra)
    m = train.run(mined_dir, tmp_path / "model", cfg, base_model=base_model, prompts=PROMPTS)
    assert m.counts["steps"] >= 2
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in saved)
    emb = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(["a question"], prompt_name="query")
    assert emb.shape == (1, 384)

"""Tiny random-init decoder folders (Llama / Qwen2 shape) with a byte-level BPE tokenizer trained on the sample
corpus: plain Hugging Face folders, as a user's base model would be, for tests/retrieval/test_loading.py and test_export.py."""

from __future__ import annotations

from pathlib import Path

BOS, EOS = "<|begin|>", "<|end|>"


def _corpus_text() -> list[str]:
    from embedforge.sample_corpus import SAMPLE_CORPUS

    return [p.read_text() for p in sorted(Path(SAMPLE_CORPUS).glob("*.rst"))]


def make_tokenizer(folder: Path, eos_in_template: bool = False, vocab_size: int = 600) -> None:
    """A byte-level BPE tokenizer (Llama-3 / Qwen style: BOS prepended, no EOS, no pad token) in ``folder``."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # <|endoftext|>: transformers' Qwen2Tokenizer makes it the pad token, as in the real Qwen vocabularies.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus_text(), trainer)
    single = f"{BOS} $A {EOS}" if eos_in_template else f"{BOS} $A"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=f"{single} $B",
                                                       special_tokens=[(BOS, 0), (EOS, 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, model_max_length=256)
    fast.save_pretrained(str(folder))


def make_decoder(folder: Path, arch: str = "llama", hidden: int = 64, layers: int = 2, **tok_kw) -> Path:
    """A random-init decoder (``llama`` or ``qwen2``) saved as a plain Hugging Face folder with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(folder, **tok_kw)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaModel), "qwen2": (Qwen2Config, Qwen2Model)}[arch]
    config = config_cls(vocab_size=600, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(str(folder))
    return folder

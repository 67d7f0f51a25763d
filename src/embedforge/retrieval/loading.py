"""Turn a model folder into a SentenceTransformer with the right pooling, attention, padding and EOS.

A sentence-transformers folder (``modules.json``) says how it embeds: its Transformer, Pooling
(``1_Pooling/config.json``) and Normalize modules are loaded as they are. A plain Hugging Face folder does not,
so the embedder is assembled from sentence-transformers' own modules (Transformer -> Pooling -> Normalize) with
the architecture's convention, unless :class:`~embedforge.config.ModelConfig` says otherwise:

* encoders (BERT, RoBERTa, XLM-R, ModernBERT, ...): mean pooling (or ``cls``), bidirectional attention;
* decoders (Llama, Qwen, Mistral, ...): last-token pooling over causal attention, the tokenizer made to append
  its EOS token (the last token then summarises the whole text) and given a pad token where it has none; with
  ``attention=bidirectional`` the config's ``is_causal=false`` (transformers >= 5.2 builds a bidirectional mask
  from it) and mean pooling. Texts are embedded as plain text even where the tokenizer has a chat template
  (sentence-transformers 6 would otherwise render every text through it, system prompt included).

Everything chosen here lives in the files :meth:`SentenceTransformer.save` writes (``modules.json``, the Pooling
config, ``config.json``'s ``is_causal``, the tokenizer's post-processor / ``add_eos_token`` and
``padding_side``), so plain ``SentenceTransformer(saved_folder)`` embeds exactly as training did.
Code shipped inside a model folder runs only with ``trust_remote_code=true``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from embedforge.config import ModelConfig, PromptsConfig
from embedforge.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def _modules():
    """sentence-transformers' Transformer, Pooling and Normalize modules (6.x layout, else the 5.x one)."""
    try:
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def is_decoder(config: PretrainedConfig) -> bool:
    """Whether ``config`` describes a decoder-only language model (Llama, Qwen, Mistral, ...), not an encoder.

    BERT-like encoders also have a causal-LM head class, so a model type counts as a decoder only when it has a
    causal-LM class and no masked-LM class.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False):
        return False
    architectures = getattr(config, "architectures", None) or []
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or any(a.endswith("ForCausalLM") for a in architectures)


def _hf_config(path: str, trust_remote_code: bool) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{path} ships its own model code; set model.trust_remote_code=true if you trust "
                              "it (it runs as Python on this machine)") from None
        raise ConfigError(f"{path}: cannot read config.json: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot load embedding model {path!r}: {exc}") from None


def _causal(cfg: ModelConfig, config: PretrainedConfig, decoder: bool, path: str) -> bool | None:
    """The ``is_causal`` to set on a decoder's config for ``cfg.attention``; None: leave the config as it is."""
    if cfg.attention == "auto":
        return None
    if not decoder:
        if cfg.attention == "causal":
            raise ConfigError(f"model.attention=causal: {path} is an encoder ({config.model_type}), which "
                              "attends bidirectionally; use attention=auto")
        return None
    return cfg.attention == "causal"


def load(path: str, cfg: ModelConfig | None = None, device: str = "cpu") -> SentenceTransformer:
    """The embedder of the model folder ``path`` on ``device`` (see the module docstring for what is chosen how).

    Args:
        path: A local folder (sentence-transformers or plain Hugging Face) or a hub id already in the local cache.
        cfg: Pooling / attention / padding side / remote code; ``auto`` fields follow the folder.
        device: Torch device.

    Raises:
        ConfigError: The folder cannot be loaded, needs remote code that was not allowed, or the requested mode
            does not apply to the architecture.
    """
    from sentence_transformers import SentenceTransformer

    cfg = cfg or ModelConfig()
    config = _hf_config(path, cfg.trust_remote_code)
    decoder = is_decoder(config)
    causal = _causal(cfg, config, decoder, path)
    try:
        if not Path(path).is_dir() or (Path(path) / "modules.json").is_file():  # hub ids: ST looks for modules.json
            model = SentenceTransformer(path, device=device, trust_remote_code=cfg.trust_remote_code)
            if cfg.pooling != "auto":
                _set_pooling(model, cfg.pooling, path)
        else:
            model = _assemble(path, cfg, config, decoder, causal, device)
    except OSError as exc:
        raise ConfigError(f"cannot load embedding model {path!r}: {exc}") from None
    if causal is not None:  # read by transformers' mask builder at every forward, saved in config.json
        model[0].auto_model.config.is_causal = causal
    tokenizer = model.tokenizer
    if cfg.padding_side != "auto":
        tokenizer.padding_side = cfg.padding_side
        tokenizer.init_kwargs["padding_side"] = cfg.padding_side  # what save_pretrained writes to tokenizer_config
    if tokenizer.pad_token is None:  # decoders rarely have one; padding is masked out, any id will do
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if decoder and not getattr(model[0].auto_model.config, "is_causal", True):
        check_bidirectional(model, path)
    return model


def merge_prompts(model: SentenceTransformer, prompts: PromptsConfig) -> PromptsConfig:
    """``prompts`` where set, else the folder's own (``config_sentence_transformers.json``: ``query``, and
    ``document`` or ``passage``), so e.g. a bge folder's query instruction is kept unless the config replaces it."""
    own = getattr(model, "prompts", None) or {}
    return PromptsConfig(query=prompts.query or own.get("query", ""),
                         document=prompts.document or own.get("document", own.get("passage", "")))


def _assemble(path: str, cfg: ModelConfig, config: PretrainedConfig, decoder: bool, causal: bool | None,
              device: str) -> SentenceTransformer:
    """Transformer -> Pooling -> Normalize for a folder without ``modules.json``."""
    from sentence_transformers import SentenceTransformer

    transformer_cls, pooling_cls, normalize_cls = _modules()
    shared = {"trust_remote_code": cfg.trust_remote_code}
    transformer = transformer_cls(path, model_kwargs=dict(shared), processor_kwargs=dict(shared),
                                  config_kwargs=dict(shared))
    if "message" in transformer.modality_config:  # a chat template: sentence-transformers 6 would wrap every text
        del transformer.modality_config["message"]  # in it (system prompt included); plain text, saved as such
        transformer.input_formatter.supported_modalities = list(transformer.modality_config)
    causal = decoder and (causal if causal is not None else getattr(config, "is_causal", True))
    pooling = cfg.pooling if cfg.pooling != "auto" else ("lasttoken" if causal else "mean")
    if pooling == "lasttoken" and decoder:
        append_eos(transformer.tokenizer, path)
    modules = [transformer, pooling_cls(transformer.get_embedding_dimension(), pooling_mode=pooling),
               normalize_cls()]
    log.info("%s has no modules.json: a %s, %s pooling, %s attention", path, "decoder" if decoder else "encoder",
             pooling, "causal" if causal else "bidirectional")
    return SentenceTransformer(modules=modules, device=device)


def _set_pooling(model: SentenceTransformer, mode: str, path: str) -> None:
    pools = [m for m in model if type(m).__name__ == "Pooling"]
    if len(pools) != 1:
        raise ConfigError(f"model.pooling={mode}: {path} has {len(pools)} Pooling modules; set pooling=auto")
    if pools[0].pooling_mode != mode:
        log.warning("%s: pooling %s from model.pooling replaces the folder's %s", path, mode,
                    pools[0].pooling_mode)
        pools[0].pooling_mode = mode


def _ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return list(tokenizer("embedforge")["input_ids"])


def append_eos(tokenizer: PreTrainedTokenizerBase, path: str) -> None:
    """Make ``tokenizer`` end every text with its EOS token (last-token pooling reads that position).

    Through transformers' ``add_eos_token`` where the tokenizer has it (saved in ``tokenizer_config.json`` and
    re-applied on load), else by appending a template to the fast tokenizer's post-processor (saved in
    ``tokenizer.json``). A tokenizer that already appends EOS is left as it is.

    Raises:
        ConfigError: The tokenizer has no EOS token, or neither way makes it append one.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(f"{path}: the tokenizer has no eos_token, which last-token pooling needs; set "
                          "model.pooling=mean or add an eos_token to the tokenizer")
    before = _ids(tokenizer)
    if before[-1] == eos:
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{path}: cannot make this (slow) tokenizer append EOS; set model.pooling=mean")
    old = backend.post_processor
    if hasattr(type(tokenizer), "add_eos_token") and hasattr(tokenizer, "update_post_processor"):
        bos = tokenizer.bos_token_id
        tokenizer.add_bos_token = bos is not None and before[0] == bos  # the rebuilt template keeps a BOS it had
        tokenizer.add_eos_token = True
        if _ids(tokenizer) == before + [eos]:
            return
        object.__setattr__(tokenizer, "_add_eos_token", False)  # undo without another rebuild
        backend.post_processor = old
    from tokenizers import processors

    token = tokenizer.eos_token
    template = processors.TemplateProcessing(single=f"$A:0 {token}:0", pair=f"$A:0 {token}:0 $B:1 {token}:1",
                                             special_tokens=[(token, eos)])
    backend.post_processor = processors.Sequence([old, template]) if old is not None else template
    if _ids(tokenizer) != before + [eos]:
        raise ConfigError(f"{path}: the tokenizer does not append EOS after patching; set model.pooling=mean")


def check_bidirectional(model: SentenceTransformer, path: str) -> None:
    """Raise unless the decoder really attends bidirectionally: the first token's hidden state must change when
    a later token does (transformers honours ``is_causal=false`` only for models that build their mask with
    ``create_causal_mask``).

    Raises:
        ConfigError: The architecture ignores ``is_causal=false``.
    """
    import torch

    hf = model[0].auto_model
    ids = torch.tensor([[11, 12, 13], [11, 12, 14]], device=hf.device)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    if torch.allclose(out[0, 0], out[1, 0]):
        import transformers

        raise ConfigError(f"model.attention=bidirectional: {path} ({hf.config.model_type}) ignores "
                          f"is_causal=false in transformers {transformers.__version__}; use attention=causal")

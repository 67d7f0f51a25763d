"""How a stage embeds many texts: the encoder (ONNX Runtime on a CPU, PyTorch), its threads and its caches.

One section type, used by mine, evaluate (and the gate through it) and sdg's LLM de-duplication, so each stage that
embeds a corpus takes the same fast path on a CPU and shares one graph cache.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedforge.config.base import StageConfig


class EncodeConfig(StageConfig):
    """How a stage embeds whole corpora (embedforge.retrieval.encode): on a CPU through ONNX Runtime on a graph
    exported from the model, on a GPU always with PyTorch."""

    encoder: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto/onnx: on a CPU, ONNX Runtime runs a graph exported from the model (the export "
        "stage's graph, made once per model and kept in cache_dir), in length-sorted batches; auto exports a model "
        "only for an encoding of 1000 texts or more (smaller ones use a graph already made, else PyTorch) and "
        "falls back to PyTorch in one line where onnxruntime is not importable or the model cannot be exported, "
        "onnx says so as a warning. torch: sentence-transformers' encode. On a GPU every choice encodes with "
        "PyTorch.")
    int8: bool = Field(
        False, description="ONNX Runtime only: run a copy of the graph with int8 weights (onnxruntime's dynamic "
        "quantisation) instead of fp32. Faster on a CPU, but embeddings differ more from PyTorch's; off by default "
        "(docs/benchmarks.md has its measured speed and ranking change).")
    threads: int = Field(0, ge=0, le=1024, description="ONNX Runtime's intra-op threads; 0 = the cores this process "
                         "may use (its CPU affinity, capped by a cgroup CPU quota).")
    cache_dir: str = Field(
        "", description="Folder of the exported graphs, one per model content, ModelConfig and precision, shared "
        "by the stages of a run; `embedforge run` uses <out>/encode_cache. Empty: a temporary folder per process.")
    embedding_cache_mb: int = Field(
        4096, ge=0, le=10_000_000, description="ONNX Runtime only: corpus-scale embeddings are kept in "
        "cache_dir/embeddings (keyed by model content, precision, prompt and texts) up to this many MB, least "
        "recently used removed first, so the same texts are never embedded twice by the same model (the base "
        "model's --eval-beir evaluation in later runs, a champion already evaluated on it). 0 = keep none.")

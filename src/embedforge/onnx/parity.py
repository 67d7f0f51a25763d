"""The export parity gate: embeddings of the exported ONNX graph (onnxruntime) vs the PyTorch model on real chunks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedforge.config import ExportConfig
from embedforge.contracts import (
    Chunk,
    write_json,
)
from embedforge.errors import InputError, ParityError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

from embedforge.onnx.graph import onnx_opset, tokenize_for_onnx
from embedforge.onnx.signature import OUTPUT_NAME

log = logging.getLogger(__name__)

#: Batch sizes cycled through in the ONNX Runtime parity run (different padding per batch).
PARITY_BATCH_SIZES = (1, 7, 2, 16, 3, 32)




# ------------------------------------------------------------------------------------------------ parity
def pick_parity_chunks(chunks: Sequence[Chunk], n: int) -> list[Chunk]:
    """Up to ``n`` chunks evenly spread over text length (shortest and longest included), in corpus order."""
    if len(chunks) <= n:
        return list(chunks)
    order = sorted(range(len(chunks)), key=lambda i: (len(chunks[i].text), chunks[i].chunk_id))
    picks = sorted({order[int(round(j))] for j in np.linspace(0, len(order) - 1, n)})
    return [chunks[i] for i in picks]


def check_parity(
    onnx_path: str | Path,
    model: "SentenceTransformer",
    chunks: Sequence[Chunk],
    cfg: ExportConfig,
    parity_path: str | Path,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    min_cosine: float | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime embeddings of ``chunks`` with PyTorch's; write ``parity_path`` either way.

    Args:
        onnx_path: The exported graph.
        model: The PyTorch model it was exported from.
        chunks: Real chunks to embed (all are used; pick them with :func:`pick_parity_chunks`).
        cfg: ``parity_min_cosine`` and ``opset`` (recorded).
        parity_path: Where to write the report (``parity.json``).
        batch_sizes: ONNX Runtime batch sizes, cycled through (different padding per batch).
        min_cosine: Threshold (default ``cfg.parity_min_cosine``; the FP16 graph uses ``cfg.fp16_min_cosine``).

    Returns:
        The report: ``min_cosine``, ``mean_cosine``, ``max_abs_diff``, ``samples``, ``opset``,
        ``onnxruntime_version``, ``worst_chunk_id``, ``passed``, ...

    Raises:
        ParityError: The minimum cosine is below ``cfg.parity_min_cosine``.
    """
    import onnxruntime as ort

    from embedforge.retrieval.encode import encode, prompt_for

    threshold = cfg.parity_min_cosine if min_cosine is None else min_cosine
    if not chunks:
        raise InputError("no chunks to check parity on")
    texts = [c.text for c in chunks]
    prompt = prompt_for(model, "document")
    ref = encode(model, texts, kind="document", batch_size=32)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph_inputs = {i.name for i in session.get_inputs()}
    got = np.zeros_like(ref)
    used_sizes: list[int] = []
    seq_lengths: set[int] = set()
    start, step = 0, 0
    while start < len(texts):
        bs = batch_sizes[step % len(batch_sizes)]
        feed = tokenize_for_onnx(model, texts[start : start + bs], prompt)
        seq_lengths.add(int(feed["input_ids"].shape[1]))
        (out,) = session.run([OUTPUT_NAME], {k: v for k, v in feed.items() if k in graph_inputs})
        got[start : start + len(out)] = out
        used_sizes.append(len(out))
        start += bs
        step += 1

    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.sum(got * ref, axis=1) / np.maximum(norms, 1e-12)
    cos = np.where(np.isfinite(cos), cos, -1.0)
    worst = int(np.argmin(cos))
    report = {
        "passed": bool(cos[worst] >= threshold),
        "min_cosine": float(cos[worst]),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(np.nan_to_num(np.abs(got - ref), nan=np.inf).max()),
        "threshold": threshold,
        "samples": len(texts),
        "worst_chunk_id": chunks[worst].chunk_id,
        "batch_sizes": sorted(set(used_sizes)),
        "sequence_lengths": [min(seq_lengths), max(seq_lengths)],
        "max_seq_length": model.max_seq_length,
        "prompt": prompt,
        "opset": onnx_opset(onnx_path),
        "onnxruntime_version": ort.__version__,
        "per_chunk": [{"chunk_id": c.chunk_id, "cosine": round(float(x), 7)} for c, x in zip(chunks, cos)],
    }
    write_json(parity_path, report)
    if not report["passed"]:
        raise ParityError(
            f"ONNX export of {onnx_path} does not reproduce PyTorch: chunk {chunks[worst].chunk_id!r} has cosine "
            f"{cos[worst]:.6f} < the threshold {threshold} (export.parity_min_cosine / fp16_min_cosine; details in "
            f"{parity_path})"
        )
    log.info("parity: min cosine %.6f, mean %.6f, max |diff| %.2e over %d chunks", report["min_cosine"],
             report["mean_cosine"], report["max_abs_diff"], len(texts))
    return report



"""Export stage: the fine-tuned sentence-transformers model as ONE ONNX graph, checked for parity with PyTorch.

The graph
---------
========================  =========  ======================  ===============================================
name                      type       shape                   meaning
========================  =========  ======================  ===============================================
``input_ids`` (input)     int64      ``[batch, sequence]``   token ids (prompt prepended to the text)
``attention_mask`` (in)   int64      ``[batch, sequence]``   1 for tokens, 0 for padding
``embeddings`` (output)   float32    ``[batch, dim]``        pooled, L2-normalised sentence embeddings
========================  =========  ======================  ===============================================

It runs the model's own modules: the Transformer (``token_type_ids``, when the model takes them, are zeros made
inside the graph), then the Pooling module with its saved mode (mean / cls / max / lasttoken / ...), any
Dense/Normalize modules, and a final L2 normalisation. Unlike sentence-transformers' own ONNX backend (which
leaves pooling to Python), a server only tokenises and calls the graph. The tokenizer files,
``config_sentence_transformers.json`` (the prompts) and ``sentence_bert_config.json`` (``max_seq_length``) are
copied next to ``model.onnx`` so a server tokenises exactly like training: ``prompt + text``, truncated to
``max_seq_length`` tokens.

Size: weights above ``cfg.external_data_mb`` (default 1 GB, below the 2 GB protobuf limit a 1B model exceeds)
are stored in ``model.onnx.data`` beside the graph (ONNX external data; onnxruntime, ``onnx.load`` and Triton
read it from the same folder). Decoder embedders export the same way: their Pooling mode (``lasttoken`` reads
the last attended position, whichever side the tokenizer pads) runs in the graph, and the tokenizer files carry
the EOS token it appends and its padding side.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``. In torch 2.9+
the dynamo exporter is the default, but for this graph it is much slower, needs ``onnxscript`` and could not
down-convert to opset 17 (it silently produced opset 18); the TorchScript exporter honours ``opset`` exactly
(up to 20). ``cfg.exporter="auto"`` uses it while torch ships it (and opset <= 20), else the dynamo exporter
with ``dynamic_shapes``.

Variants: ``cfg.fp16`` also writes ``model_fp16.onnx`` (onnxruntime's float16 converter, inputs/outputs kept
in their types), checked like the FP32 graph with ``cfg.fp16_min_cosine`` (``parity_fp16.json``).
``cfg.tensorrt_plan`` also builds ``model.plan``, a TensorRT engine (FP16, one optimisation profile for
``input_ids``/``attention_mask`` from ``tensorrt_min/opt/max_shape``) for Triton's ``tensorrt_plan`` platform;
TensorRT needs an NVIDIA GPU and the ``tensorrt`` package, so where it is not importable the step logs why it
skips the plan and records ``"skipped: ..."`` in ``variants.json`` instead of failing.

Parity: up to ``cfg.parity_samples`` real chunks (evenly spread over text length, so the longest ones exercise
truncation) are embedded by PyTorch (:func:`embedforge.retrieval.encode.encode`, document prompt) and by ONNX Runtime
(batches of varying size, so padding differs); the minimum cosine must reach ``cfg.parity_min_cosine`` or
:class:`~embedforge.errors.ParityError` names the worst chunk. ``parity.json`` is written either way; the
manifest only on success.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embedforge.config import ExportConfig
from embedforge.contracts import (
    CHUNKS_FILE,
    ONNX_FILE,
    PARITY_FILE,
    Manifest,
    StageTimer,
    read_chunks,
    read_json,
    write_json,
)
from embedforge.errors import InputError
from embedforge.onnx.graph import (  # noqa: F401  (re-exported: the export API)
    SUPPORTED_MODULES,
    SUPPORTED_POOLING,
    build_graph_module,
    check_modules,
    export_onnx,
    onnx_opset,
    pick_exporter,
    save_onnx,
    tokenize_for_onnx,
)
from embedforge.onnx.parity import check_parity, pick_parity_chunks  # noqa: F401
from embedforge.onnx.variants import (  # noqa: F401  (re-exported: the export API)
    FP16_ONNX_FILE,
    FP16_PARITY_FILE,
    PLAN_FILE,
    VARIANTS_FILE,
    _variants,
    build_tensorrt_plan,
    export_fp16,
)
from embedforge.retrieval.encode import embedding_dim

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def copy_tokenizer_files(model: "SentenceTransformer", model_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Tokenizer files + prompts (``config_sentence_transformers.json``) + ``sentence_bert_config.json``.

    The tokenizer is saved from the loaded model, so ``tokenizer_config.json``'s ``model_max_length`` is the
    model's ``max_seq_length`` (where sentence-transformers >= 6 keeps it); ``sentence_bert_config.json`` also
    states ``max_seq_length`` explicitly (where older sentence-transformers and simple servers look). Prompts are
    copied from the model folder, or written from the loaded model when the folder has none.

    Args:
        model: The loaded model.
        model_dir: Its folder.
        out_dir: The export folder.

    Returns:
        Names of the files written next to ``model.onnx``.
    """
    out_dir = Path(out_dir)
    before = {p.name for p in out_dir.iterdir()}
    model.tokenizer.save_pretrained(str(out_dir))
    st_src = Path(model_dir) / "config_sentence_transformers.json"
    st_cfg = read_json(st_src) if st_src.is_file() else {}
    st_cfg["prompts"] = dict(getattr(model, "prompts", None) or {})
    st_cfg.setdefault("default_prompt_name", None)
    write_json(out_dir / "config_sentence_transformers.json", st_cfg)
    sb_src = Path(model_dir) / "sentence_bert_config.json"
    sb_cfg = read_json(sb_src) if sb_src.is_file() else {}
    sb_cfg["max_seq_length"] = int(model.max_seq_length)
    write_json(out_dir / "sentence_bert_config.json", sb_cfg)
    return sorted({p.name for p in out_dir.iterdir()} - before)


# ------------------------------------------------------------------------------------------------ stage
def run(model_dir: str | Path, chunks_dir: str | Path, out_dir: str | Path, cfg: ExportConfig) -> Manifest:
    """Export ``model_dir`` to ``out_dir/model.onnx`` with tokenizer files, and check parity on real chunks.

    Args:
        model_dir: A sentence-transformers folder (Transformer + Pooling (+ Dense/Normalize)).
        chunks_dir: The ``chunks`` artifact: parity is checked on up to ``cfg.parity_samples`` of its chunks.
        out_dir: Output folder: ``model.onnx``, tokenizer files, ``config_sentence_transformers.json``,
            ``sentence_bert_config.json``, ``parity.json``, ``manifest.json``.
        cfg: Opset, parity threshold and sample count, exporter.

    Returns:
        The manifest (extra fields: ``dim``, ``opset``, ``file_size``, ``pooling``, ``exporter``).

    Raises:
        ParityError: ONNX Runtime embeddings differ from PyTorch's (``parity.json`` is still written).
        InputError: The model folder or chunks are unusable.
    """
    from embedforge.retrieval.encode import load_model

    timer = StageTimer("export")
    model_dir, chunks_dir, out_dir = Path(model_dir), Path(chunks_dir), Path(out_dir)
    if not (model_dir / "modules.json").is_file():
        raise InputError(f"{model_dir} is not a sentence-transformers folder (no modules.json)")
    chunks = read_chunks(chunks_dir)
    if not chunks:
        raise InputError(f"{chunks_dir / CHUNKS_FILE} holds no chunks: parity needs real texts")
    model = load_model(str(model_dir), device="cpu")
    model.eval()
    pooling, module_names = check_modules(model, model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = pick_exporter(cfg)
    samples = pick_parity_chunks(chunks, cfg.parity_samples)
    by_len = sorted(samples, key=lambda c: len(c.text))
    onnx_path = out_dir / ONNX_FILE
    log.info("exporting %s (%s, pooling %s) to %s with the %s exporter, opset %d", model_dir,
             " -> ".join(module_names), pooling, onnx_path, exporter, cfg.opset)
    graph_files = export_onnx(model, onnx_path, cfg.opset, [by_len[0].text, by_len[-1].text], exporter=exporter,
                              external_data_mb=cfg.external_data_mb)
    side_files = graph_files[1:] + copy_tokenizer_files(model, model_dir, out_dir)
    report = check_parity(onnx_path, model, samples, cfg, out_dir / PARITY_FILE)
    side_files += _variants(onnx_path, model, samples, cfg, out_dir)
    dim = int(embedding_dim(model))
    return timer.write_manifest(
        out_dir,
        counts={"parity_samples": report["samples"], "dim": dim},
        inputs={"model": model_dir, "chunks": chunks_dir},
        config=cfg,
        dim=dim,
        opset=report["opset"],
        file_size=sum((out_dir / name).stat().st_size for name in graph_files),
        pooling=pooling,
        exporter=exporter,
        files=sorted([ONNX_FILE, PARITY_FILE, *side_files]),
        min_cosine=report["min_cosine"],
        mean_cosine=report["mean_cosine"],
        max_abs_diff=report["max_abs_diff"],
        parity_samples=report["samples"],
    )

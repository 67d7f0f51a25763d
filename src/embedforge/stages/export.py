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

import inspect
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from embedforge.errors import ConfigError, InputError
from embedforge.retrieval.encode import embedding_dim

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

from embedforge.onnx.signature import OUTPUT_NAME
from embedforge.onnx.signature import REQUIRED_INPUTS as INPUT_NAMES

log = logging.getLogger(__name__)

#: Pooling modes the graph reproduces (the padded code path of sentence-transformers' Pooling module).
SUPPORTED_POOLING = {"mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean"}
#: Modules the graph may run after the Transformer, by class name.
SUPPORTED_MODULES = {"Pooling", "Normalize", "Dense"}
TORCHSCRIPT_MAX_OPSET = 20



from embedforge.onnx.parity import (  # noqa: F401
    check_parity,
    onnx_opset,
    pick_parity_chunks,
    tokenize_for_onnx,
)
from embedforge.onnx.variants import (  # noqa: F401  (re-exported: the export API)
    FP16_ONNX_FILE,
    FP16_PARITY_FILE,
    PLAN_FILE,
    VARIANTS_FILE,
    _variants,
    build_tensorrt_plan,
    export_fp16,
    save_onnx,
)


# ------------------------------------------------------------------------------------------------ graph module
def _check_modules(model: "SentenceTransformer", model_dir: str | Path) -> tuple[str, list[str]]:
    """The pooling mode and module names; raises InputError for what the graph cannot reproduce."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if not modules or not hasattr(modules[0], "auto_model"):
        raise InputError(f"{model_dir}: the first module must be a Transformer (modules: {names})")
    pooling = [m for m in modules if type(m).__name__ == "Pooling"]
    if len(pooling) != 1:
        raise InputError(f"{model_dir}: expected one Pooling module, found {len(pooling)} (modules: {names})")
    unsupported = [n for n in names[1:] if n not in SUPPORTED_MODULES]
    if unsupported:
        raise InputError(f"{model_dir}: modules {unsupported} cannot be exported (supported after the "
                         f"Transformer: {sorted(SUPPORTED_MODULES)})")
    pool = pooling[0]
    mode = pool.pooling_mode
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in SUPPORTED_POOLING]
    if bad:
        raise InputError(f"{model_dir}: pooling mode {bad} is not supported (supported: {sorted(SUPPORTED_POOLING)})")
    prompts = {k: v for k, v in (getattr(model, "prompts", None) or {}).items() if v}
    if not getattr(pool, "include_prompt", True) and prompts:
        raise InputError(
            f"{model_dir}: Pooling has include_prompt=false with prompts {prompts}: the graph cannot tell prompt "
            "tokens from text tokens; set include_prompt=true (and retrain) or drop the prompts"
        )
    return "+".join(modes), names


def _needs_token_type_ids(model: "SentenceTransformer") -> bool:
    hf = model[0].auto_model
    takes = "token_type_ids" in inspect.signature(hf.forward).parameters
    return takes and "token_type_ids" in getattr(model.tokenizer, "model_input_names", [])


def build_graph_module(model: "SentenceTransformer") -> "torch.nn.Module":
    """``forward(input_ids, attention_mask) -> embeddings``: the model's modules + L2 normalisation.

    Args:
        model: A loaded sentence-transformers model (Transformer, Pooling, optional Dense/Normalize).

    Returns:
        A ``torch.nn.Module`` in eval mode, sharing the model's weights.
    """
    import torch

    class EmbeddingGraph(torch.nn.Module):
        def __init__(self, st: "SentenceTransformer", token_type_ids: bool):
            super().__init__()
            self.stages = torch.nn.ModuleList(list(st))
            self.token_type_ids = token_type_ids

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.token_type_ids:
                features["token_type_ids"] = torch.zeros_like(input_ids)
            for stage in self.stages:
                features = stage(features)
            return torch.nn.functional.normalize(features["sentence_embedding"].float(), p=2.0, dim=-1)

    return EmbeddingGraph(model, _needs_token_type_ids(model)).eval()


# ------------------------------------------------------------------------------------------------ export

def _pick_exporter(cfg: ExportConfig) -> str:
    requested = cfg.exporter
    if requested != "auto":
        return requested
    try:
        import torch.onnx.utils  # noqa: F401  (the TorchScript exporter)
    except ImportError:
        return "dynamo"
    return "torchscript" if cfg.opset <= TORCHSCRIPT_MAX_OPSET else "dynamo"


def export_onnx(model: "SentenceTransformer", path: str | Path, opset: int, sample_texts: Sequence[str],
                exporter: str = "torchscript", external_data_mb: int = 1024) -> list[str]:
    """Write ``model`` as one ONNX graph (see the module docstring) and check it with onnx.checker; weights over
    ``external_data_mb`` MB go to ``model.onnx.data`` beside it (:func:`~embedforge.onnx.variants.save_onnx`).

    Args:
        model: The sentence-transformers model (moved to CPU for tracing).
        path: Output ``model.onnx``.
        opset: ONNX opset (>= 17).
        sample_texts: Real texts to trace with (two of different length, so the trace sees padding).
        exporter: "torchscript" (``dynamo=False`` + ``dynamic_axes``) or "dynamo" (``dynamic_shapes``).
        external_data_mb: Weight size above which they are stored outside the graph file.

    Returns:
        The names of the files written.

    Raises:
        ConfigError: The exporter cannot produce the requested opset.
    """
    import onnx
    import torch

    path = Path(path)
    graph = build_graph_module(model).to("cpu")
    texts = list(sample_texts[:2]) or ["embedforge export", "a second, longer sample text for tracing padding"]
    if len(texts) == 1:
        texts.append(texts[0] + " " + texts[0])
    feed = tokenize_for_onnx(model, texts, "")
    args = tuple(torch.from_numpy(feed[n]) for n in INPUT_NAMES)
    # The exporter writes its own external-data files past 2 GB: into a scratch folder, read back from there.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as scratch:
        tmp = Path(scratch) / path.name
        _export_to(graph, args, tmp, opset, exporter, max_len=int(model.max_seq_length or 512))
        proto = onnx.load(str(tmp))
        dim = embedding_dim(model)
        out = next(o for o in proto.graph.output if o.name == OUTPUT_NAME)
        out_dims = out.type.tensor_type.shape.dim
        if len(out_dims) == 2 and dim:  # the tracer leaves the feature axis symbolic; it is the fixed model dim
            out_dims[0].ClearField("dim_value")
            out_dims[0].dim_param = "batch"
            out_dims[1].ClearField("dim_param")
            out_dims[1].dim_value = int(dim)
        files = save_onnx(proto, tmp, external_data_mb)
        for name in files:
            (Path(scratch) / name).replace(path.with_name(name))
    got = onnx_opset(path)
    if got != opset:
        log.warning("asked for opset %d, the %s exporter produced opset %d", opset, exporter, got)
    return files


def _export_to(graph: "torch.nn.Module", args: tuple, tmp: Path, opset: int, exporter: str, max_len: int) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape-only branches and the exporter's deprecation
        if exporter == "torchscript":
            if opset > TORCHSCRIPT_MAX_OPSET:
                raise ConfigError(f"export.opset={opset}: the TorchScript exporter stops at {TORCHSCRIPT_MAX_OPSET}; "
                                  "use export.exporter=dynamo or a lower opset")
            torch.onnx.export(
                graph, args, str(tmp), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        elif exporter == "dynamo":
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max_len)
            program = torch.onnx.export(
                graph, args, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_shapes={n: {0: batch, 1: seq} for n in INPUT_NAMES}, opset_version=opset, dynamo=True,
                external_data=True,
            )
            program.save(str(tmp), external_data=True)  # into the scratch folder; save_onnx decides for the output
        else:
            raise ConfigError(f"export.exporter={exporter!r}: use auto, torchscript or dynamo")



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
    pooling, module_names = _check_modules(model, model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = _pick_exporter(cfg)
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

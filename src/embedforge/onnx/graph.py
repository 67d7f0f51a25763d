"""The exported graph itself: a loaded sentence-transformers model as ONE ONNX graph (token ids and attention mask
in, pooled L2-normalised embeddings out), how its inputs are tokenised, and how it is written to disk.

Used by the export stage (:mod:`embedforge.stages.export`, which documents the graph and checks its parity) and by
the CPU encoder (:mod:`embedforge.retrieval.onnx_encoder`, which exports a temporary graph to run with ONNX Runtime).
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedforge.config import ExportConfig
from embedforge.errors import ConfigError, InputError
from embedforge.onnx.signature import OUTPUT_NAME
from embedforge.onnx.signature import REQUIRED_INPUTS as INPUT_NAMES

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

#: Pooling modes the graph reproduces (the padded code path of sentence-transformers' Pooling module).
SUPPORTED_POOLING = {"mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean"}
#: Modules the graph may run after the Transformer, by class name.
SUPPORTED_MODULES = {"Pooling", "Normalize", "Dense"}
TORCHSCRIPT_MAX_OPSET = 20


def tokenize_for_onnx(model: "SentenceTransformer", texts: Sequence[str], prompt: str) -> dict[str, np.ndarray]:
    """Tokenise like sentence-transformers: ``prompt + text``, truncated to ``max_seq_length``, padded."""
    enc = model.tokenizer(
        [prompt + t for t in texts], padding=True, truncation=True, max_length=model.max_seq_length,
        return_tensors="np",
    )
    return {name: np.asarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset of an ONNX model file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def save_onnx(proto: Any, path: str | Path, external_data_mb: int) -> list[str]:
    """Write ``proto`` to ``path`` and check it there; weights over ``external_data_mb`` MB go to
    ``<path name>.data`` beside it (ONNX's external-data format: one protobuf file cannot exceed 2 GB).

    Returns:
        The names of the files written (the graph, and its data file when there is one).
    """
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    external = sum(t.ByteSize() for t in proto.graph.initializer) > external_data_mb * 2**20
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)  # by path: works above 2 GB, reads the data file
    return [path.name, data.name] if external else [path.name]


# ------------------------------------------------------------------------------------------------ graph module
def check_modules(model: "SentenceTransformer", model_dir: str | Path) -> tuple[str, list[str]]:
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

def pick_exporter(cfg: ExportConfig) -> str:
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
        dim = _output_width(graph, args)
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


def _output_width(graph: "torch.nn.Module", args: tuple) -> int:
    """The embedding width the graph computes (one forward pass on the trace inputs)."""
    import torch

    with torch.no_grad():
        return int(graph(*args).shape[-1])

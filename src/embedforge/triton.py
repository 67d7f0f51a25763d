"""Triton Inference Server model repository for the exported ONNX embedder.

Layout written by :func:`write_model_repository` (the repository root is the promote stage's output folder)::

    <repo>/<model_name>/config.pbtxt
    <repo>/<model_name>/<version>/model.onnx          (+ its external-data files, if any)
    <repo>/<model_name>/<version>/tokenizer/          tokenizer files + prompts for the client side

``config.pbtxt`` is built as a ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``), printed in
text format and parsed back by :func:`validate_config`: platform ``onnxruntime_onnx`` / backend
``onnxruntime``, inputs taken from the ONNX graph (``input_ids`` and ``attention_mask`` required, INT64,
dims ``[-1]`` below the batch dimension), output ``embeddings`` FP32 ``[dim]`` with ``dim`` read from the
graph, dynamic batching, an instance group of the configured kind, and ``parameters`` recording provenance
(registered model, version, run) and the prompts.

Why the tokenizer sits in the version folder: Triton's ONNX Runtime backend opens only ``model.onnx`` (the
``default_model_filename``) from a version folder and tolerates other files there — external-data weight files
of large ONNX models must live beside ``model.onnx`` anyway. Keeping the tokenizer inside the version ties it to
the exact weights it was exported with, so a rollback to an older version also rolls back its tokenizer and
prompts. Triton ignores files at the repository root (it only lists sub-folders), which is why the promote
stage can keep ``promotion.json`` and ``manifest.json`` there.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from embedforge.config import TritonConfig
from embedforge.contracts import MANIFEST, ONNX_FILE, PARITY_FILE, atomic_write_text
from embedforge.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
TOKENIZER_DIR = "tokenizer"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
REQUIRED_INPUTS = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"
#: Files of the export folder that are not tokenizer files (they are not copied into ``tokenizer/``).
_NOT_TOKENIZER = {ONNX_FILE, PARITY_FILE, MANIFEST}

# ONNX TensorProto element type -> Triton DataType name.
_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass
class Tensor:
    name: str
    data_type: str
    dims: list[int]  # without the batch dimension; -1 = variable


@dataclass
class OnnxSignature:
    """Inputs and the ``embeddings`` output of an exported graph, in Triton terms."""

    inputs: list[Tensor]
    output: Tensor
    external_data: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.output.dims[-1]


def _dims(value_info, path: Path) -> list[int]:
    shape = value_info.type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in shape.dim]
    if not dims:
        raise InputError(f"{path}: tensor {value_info.name!r} has no shape; re-export with named dynamic axes")
    if dims[0] != -1:
        raise InputError(f"{path}: tensor {value_info.name!r} has a fixed batch dimension {dims[0]}; "
                         "re-export with a dynamic batch axis (Triton batches requests)")
    return dims[1:]


def _triton_type(value_info, path: Path) -> str:
    elem = value_info.type.tensor_type.elem_type
    if elem not in _ONNX_TO_TRITON:
        raise InputError(f"{path}: tensor {value_info.name!r} has ONNX element type {elem}, which Triton cannot serve")
    return _ONNX_TO_TRITON[elem]


def _infer_output_dim(path: Path, inputs: list[Tensor]) -> int:
    """Run the graph once on a dummy batch to learn a symbolic embedding width."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {t.name: np.ones((1, *[4 if d == -1 else d for d in t.dims]), dtype=np.int64) for t in inputs}
    (out,) = sess.run([OUTPUT_NAME], feed)
    return int(out.shape[-1])


def inspect_onnx(path: str | Path) -> OnnxSignature:
    """Read the Triton-relevant signature of an exported ONNX embedder.

    Args:
        path: ``model.onnx`` (external-data files, if any, beside it).

    Returns:
        Its inputs (``input_ids``/``attention_mask`` and any others), the ``embeddings`` output with its
        width, and the external-data file names to copy along.

    Raises:
        InputError: Missing file, missing required input/output, fixed batch axis or unservable dtype.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable ONNX model: {exc}") from None
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    if missing:
        raise InputError(f"{path}: inputs {names} lack {missing}; export must name its inputs "
                         f"{list(REQUIRED_INPUTS)}")
    inputs = [Tensor(i.name, _triton_type(i, path), _dims(i, path)) for i in graph_inputs]
    outs = {o.name: o for o in graph.output}
    if OUTPUT_NAME not in outs:
        raise InputError(f"{path}: outputs {list(outs)} lack {OUTPUT_NAME!r} (pooled, normalised embeddings)")
    out = outs[OUTPUT_NAME]
    out_dims = _dims(out, path)
    if len(out_dims) != 1:
        raise InputError(f"{path}: output {OUTPUT_NAME!r} must be (batch, dim), got rank {len(out_dims) + 1}")
    if out_dims[0] == -1:
        out_dims = [_infer_output_dim(path, inputs)]
    external = sorted({
        entry.value for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data if entry.key == "location"
    })
    return OnnxSignature(inputs=inputs, output=Tensor(OUTPUT_NAME, _triton_type(out, path), out_dims),
                         external_data=external)


def build_config(sig: OnnxSignature, cfg: TritonConfig, parameters: dict[str, str] | None = None) -> str:
    """The ``config.pbtxt`` text for ``sig`` (validated before it is returned).

    Args:
        sig: The graph's signature (:func:`inspect_onnx`).
        cfg: Triton settings: model name, max batch size, instance kind, dynamic-batching queue delay.
        parameters: Extra string parameters (provenance, prompts); the ORT backend ignores keys it does not know.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    conf = mc.ModelConfig(name=cfg.model_name, platform=PLATFORM, backend=BACKEND,
                          max_batch_size=cfg.max_batch_size)
    conf.version_policy.latest.num_versions = 1
    for t in sig.inputs:
        conf.input.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims)
    conf.output.add(name=sig.output.name, data_type=mc.DataType.Value(sig.output.data_type), dims=sig.output.dims)
    conf.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    conf.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(cfg.instance_kind), count=1)
    for key, value in sorted((parameters or {}).items()):
        conf.parameters[key].string_value = str(value)
    text = text_format.MessageToString(conf)
    validate_config(text)
    return text


def validate_config(text: str):
    """Parse ``text`` as a Triton ``ModelConfig`` and check what this repository relies on.

    Args:
        text: ``config.pbtxt`` content.

    Returns:
        The parsed ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        ConfigError: The text does not parse (the protobuf parse error, with line:column, is in the
            message) or lacks a name, a platform/backend, inputs or outputs.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    conf = mc.ModelConfig()
    try:
        text_format.Parse(text, conf)
    except text_format.ParseError as exc:
        raise ConfigError(f"invalid Triton model configuration: {exc}") from None
    problems = []
    if not conf.name:
        problems.append("no name")
    if not (conf.platform or conf.backend):
        problems.append("no platform/backend")
    if not conf.input:
        problems.append("no input")
    if not conf.output:
        problems.append("no output")
    if conf.max_batch_size < 0:
        problems.append(f"max_batch_size {conf.max_batch_size} < 0")
    if problems:
        raise ConfigError(f"invalid Triton model configuration: {', '.join(problems)}")
    return conf


def _prompts(onnx_dir: Path) -> dict[str, str]:
    st_cfg = onnx_dir / "config_sentence_transformers.json"
    if not st_cfg.is_file():
        return {}
    try:
        prompts = json.loads(st_cfg.read_text(encoding="utf-8")).get("prompts") or {}
    except (json.JSONDecodeError, AttributeError):
        raise InputError(f"{st_cfg} is not valid JSON") from None
    out = {}
    if prompts.get("query"):
        out["query_prompt"] = prompts["query"]
    if prompts.get("document") or prompts.get("passage"):
        out["document_prompt"] = prompts.get("document") or prompts.get("passage")
    return out


def write_model_repository(
    onnx_dir: str | Path,
    repo_dir: str | Path,
    cfg: TritonConfig,
    version: str | int,
    parameters: dict[str, str] | None = None,
) -> Path:
    """Add ``version`` of the exported model to the Triton repository at ``repo_dir``.

    Other versions already in the repository are kept; ``config.pbtxt`` is (re)written from this export.

    Args:
        onnx_dir: The export folder: ``model.onnx`` (+ external data), tokenizer files, optional
            ``config_sentence_transformers.json`` (prompts) and ``parity.json``.
        repo_dir: Repository root (created if missing).
        cfg: Triton settings.
        version: Triton version number (the registered model version, a positive integer).
        parameters: Extra string parameters for ``config.pbtxt``.

    Returns:
        The version folder ``<repo_dir>/<cfg.model_name>/<version>``.

    Raises:
        InputError: Bad export folder or version.
        ConfigError: The generated configuration does not validate.
    """
    onnx_dir, repo_dir = Path(onnx_dir), Path(repo_dir)
    if not str(version).isdigit() or int(version) < 1:
        raise InputError(f"Triton model versions are positive integers, got {version!r}")
    sig = inspect_onnx(onnx_dir / ONNX_FILE)
    params = {"embedding_dim": str(sig.dim), "normalized": "true", "tokenizer": f"{version}/{TOKENIZER_DIR}"}
    params.update(_prompts(onnx_dir))
    params.update(parameters or {})
    text = build_config(sig, cfg, params)

    model_dir = repo_dir / cfg.model_name
    version_dir = model_dir / str(int(version))
    if version_dir.exists():
        shutil.rmtree(version_dir)
    tmp = model_dir / f".{int(version)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / TOKENIZER_DIR).mkdir(parents=True)
    shutil.copy2(onnx_dir / ONNX_FILE, tmp / ONNX_FILE)
    for name in sig.external_data:
        src = onnx_dir / name
        if not src.is_file():
            raise InputError(f"{onnx_dir / ONNX_FILE} stores weights in {name}, which is not in {onnx_dir}")
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tmp / name)
    skip = _NOT_TOKENIZER | set(sig.external_data)
    for p in sorted(onnx_dir.iterdir()):
        if p.is_file() and p.name not in skip and not p.name.startswith("."):
            shutil.copy2(p, tmp / TOKENIZER_DIR / p.name)
    tmp.rename(version_dir)  # a half-copied version never appears under a numeric name
    atomic_write_text(model_dir / CONFIG_FILE, text)
    log.info("Triton repository %s: %s version %s (dim %d)", repo_dir, cfg.model_name, version, sig.dim)
    return version_dir

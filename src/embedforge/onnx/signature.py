"""What an exported ONNX graph takes and returns (names, Triton data types, dims), read from the file, so the
Triton configs are written from the graph itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embedforge.errors import InputError

REQUIRED_INPUTS = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"

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



"""Optional serving variants of the exported graph: FP16 (parity-checked) and a TensorRT plan where
``tensorrt`` is importable."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.config import ExportConfig
from embedforge.contracts import (
    Chunk,
    write_json,
)
from embedforge.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

from embedforge.onnx.signature import REQUIRED_INPUTS as INPUT_NAMES

log = logging.getLogger(__name__)




from embedforge.onnx.graph import save_onnx
from embedforge.onnx.parity import check_parity

# ------------------------------------------------------------------------------------------------ variants
FP16_ONNX_FILE = "model_fp16.onnx"
FP16_PARITY_FILE = "parity_fp16.json"
PLAN_FILE = "model.plan"
#: What the optional variants came to (``{"fp16": {...}, "tensorrt_plan": {"status": "built" | "skipped: ..."}}``).
VARIANTS_FILE = "variants.json"


def export_fp16(onnx_path: str | Path, out_path: str | Path, external_data_mb: int = 1024) -> list[str]:
    """``onnx_path`` with weights and compute in FP16 (inputs stay int64, the output FP32), via onnxruntime;
    saved by :func:`save_onnx`. Returns the files written."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model is already fp16"-style notices on constant folding
        half = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    return save_onnx(half, out_path, external_data_mb)


def build_tensorrt_plan(onnx_path: str | Path, plan_path: str | Path, cfg: ExportConfig) -> str:
    """Build a TensorRT engine (FP16, one optimisation profile from ``cfg``) for Triton's ``tensorrt_plan``.

    Returns:
        ``"built"``, or ``"skipped: <why>"`` when the ``tensorrt`` package is not importable (no GPU stack here).

    Raises:
        ConfigError: TensorRT could not parse the graph or build the engine.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        why = (f"skipped: the tensorrt package is not importable here ({exc}); build model.plan on a GPU node "
               "with TensorRT installed, or serve model.onnx with triton.tensorrt=true")
        log.warning("export.tensorrt_plan: %s", why)
        return why
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, cfg.tensorrt_min_shape, cfg.tensorrt_opt_shape, cfg.tensorrt_max_shape)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ConfigError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(engine))
    return "built"


def _variants(onnx_path: Path, model: "SentenceTransformer", samples: Sequence[Chunk], cfg: ExportConfig,
              out_dir: Path) -> list[str]:
    """Build the configured FP16 graph and TensorRT plan; record what was built in ``variants.json``.

    Returns:
        The files written (for the manifest's ``files``).
    """
    variants: dict[str, Any] = {}
    files: list[str] = []
    if cfg.fp16:
        written = export_fp16(onnx_path, out_dir / FP16_ONNX_FILE, cfg.external_data_mb)
        fp16 = check_parity(out_dir / FP16_ONNX_FILE, model, samples, cfg, out_dir / FP16_PARITY_FILE,
                            min_cosine=cfg.fp16_min_cosine)
        variants["fp16"] = {"file": FP16_ONNX_FILE, "min_cosine": fp16["min_cosine"]}
        files += [*written, FP16_PARITY_FILE]
    if cfg.tensorrt_plan:
        status = build_tensorrt_plan(onnx_path, out_dir / PLAN_FILE, cfg)
        variants["tensorrt_plan"] = {"file": PLAN_FILE if status == "built" else None, "status": status}
        files += [PLAN_FILE] if status == "built" else []
    if variants:
        write_json(out_dir / VARIANTS_FILE, variants)
        files.append(VARIANTS_FILE)
    return files



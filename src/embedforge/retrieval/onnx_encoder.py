"""Encoding on a CPU through ONNX Runtime: the export stage's graph of the model, made once per model and reused.

On a CPU, PyTorch's eager forward pass spends much of its time outside the matrix products (operator dispatch,
unfused attention and layer norms); ONNX Runtime runs the same computation as one optimised graph. The graph is
:func:`embedforge.onnx.graph.export_onnx`'s — the model's own Transformer, Pooling, Dense/Normalize modules and a
final L2 normalisation — so its embeddings match PyTorch's up to float rounding (the export stage's parity check
holds it to a cosine of 0.999; tests/retrieval/test_onnx_encoder.py compares both paths on real texts).

Cache: the graph is written to ``<cache_dir>/onnx/<key>/model.onnx``, where ``key`` hashes the model folder's
files (their content, so a model downloaded again or copied elsewhere hits the same graph), the
:class:`~embedforge.config.ModelConfig` it was loaded with, the opset and the torch version that traced it.
Stages of one run (mine, evaluate, gate) share ``cache_dir`` and export each model once; a graph is written to a
scratch folder and renamed into place, so two processes never see half of one. With ``int8`` a second file,
``model_int8.onnx``, holds onnxruntime's dynamic quantisation of it (int8 weights, activations quantised per
batch).

Batches: the texts are tokenised once (prompt + text, truncated to ``max_seq_length``), sorted longest first and cut
into batches of ``batch_size`` texts, so each batch pads to nearly its own length. Threads: ONNX Runtime's intra-op
pool gets :func:`available_cores` threads (CPU affinity, capped by the cgroup CPU quota) unless set.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedforge.config import EncodeConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

#: Opset of the temporary graphs (the export stage's default).
OPSET = 17
GRAPH_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
#: Bumped when the graph export changes in a way that makes older cached graphs wrong.
FORMAT = 1

#: Model -> (resolved folder or hub id, ModelConfig JSON it was loaded with); filled by :func:`remember_source`.
_SOURCES: "weakref.WeakKeyDictionary[SentenceTransformer, tuple[str, str]]" = weakref.WeakKeyDictionary()
#: Model -> why its graph could not be made (not tried again in this process).
_FAILED: "weakref.WeakKeyDictionary[SentenceTransformer, str]" = weakref.WeakKeyDictionary()
_SCRATCH: list[tempfile.TemporaryDirectory] = []
#: (model folder, graph folder) pairs this process has said it uses (said once each).
_ANNOUNCED: set[tuple[str, Path]] = set()


class Unavailable(Exception):
    """ONNX Runtime cannot encode for this model here; the message says why (PyTorch encodes instead)."""


@dataclass(frozen=True)
class Runtime:
    """A ready ONNX Runtime session of one model's graph."""

    session: object
    inputs: frozenset[str]
    threads: int
    precision: str  # "fp32" or "int8"
    path: Path


def remember_source(model: "SentenceTransformer", source: str, model_json: str) -> None:
    """Record where ``model`` was loaded from (its folder) and how, so its graph can be found in the cache."""
    _SOURCES[model] = (source, model_json)


# ------------------------------------------------------------------------------------------------ threads
def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota (cgroup v2 ``cpu.max``
    or v1 ``cpu.cfs_quota_us``), at least 1. ``os.cpu_count()`` counts the host's cores, which oversubscribes a
    container limited to a few."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (quota / period), or None when there is no quota."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text().strip())
            return None if quota_us <= 0 else quota_us / int(p.read_text().strip())
    except (OSError, ValueError):
        return None
    return None


# ------------------------------------------------------------------------------------------------ graph cache
def folder_digest(source: str) -> str:
    """SHA-256 over a model folder's files (relative path and content), or over the hub id that is not a folder."""
    h = hashlib.sha256()
    folder = Path(source)
    if not folder.is_dir():
        h.update(f"hub:{source}".encode())
        return h.hexdigest()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


@lru_cache(maxsize=16)
def _digest_cached(source: str, stamp: tuple) -> str:
    return folder_digest(source)


def _stamp(source: str) -> tuple:
    """Sizes and modification times of a folder's files: a changed file changes it (and so the digest cache)."""
    folder = Path(source)
    if not folder.is_dir():
        return ()
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())


def graph_key(source: str, model_json: str) -> str:
    """Cache key of a model's graph: its folder's content, how it was loaded, the opset and the tracing torch."""
    import torch

    parts = [str(FORMAT), _digest_cached(source, _stamp(source)), model_json, str(OPSET), torch.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cache_root(cfg: EncodeConfig) -> Path:
    """``cfg.cache_dir``, else one temporary folder for this process (removed when it exits)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="embedforge-encode-"))
    return Path(_SCRATCH[0].name)


def graph_for(model: "SentenceTransformer", cfg: EncodeConfig, export: bool = True) -> Path | None:
    """The cached graph of ``model`` (``model_int8.onnx`` with ``cfg.int8``), exported first when missing — or
    None when it is missing and ``export`` is False.

    Raises:
        Unavailable: The model was not loaded by :func:`embedforge.retrieval.encode.load_model` (no folder to key
            the cache on), or its modules cannot be exported.
    """
    from embedforge.errors import EmbedforgeError
    from embedforge.onnx.graph import check_modules

    if model not in _SOURCES:
        raise Unavailable("the model was not loaded from a folder by embedforge (no cache key)")
    source, model_json = _SOURCES[model]
    try:
        check_modules(model, source)
    except EmbedforgeError as exc:
        raise Unavailable(str(exc)) from None
    folder = cache_root(cfg) / "onnx" / graph_key(source, model_json)
    if not (folder / GRAPH_FILE).is_file():
        if not export:
            return None
        _export(model, folder)
    elif (source, folder) not in _ANNOUNCED:
        log.info("reusing the ONNX graph of %s from %s", source, folder)
    _ANNOUNCED.add((source, folder))
    if not cfg.int8:
        return folder / GRAPH_FILE
    if not (folder / INT8_FILE).is_file():
        _quantize(folder / GRAPH_FILE, folder / INT8_FILE)
    return folder / INT8_FILE


def _export(model: "SentenceTransformer", folder: Path) -> None:
    """Export into a scratch folder beside ``folder`` and rename it into place (another process may win: fine)."""
    from embedforge.config import ExportConfig
    from embedforge.onnx.graph import export_onnx, pick_exporter

    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        log.info("exporting %s to ONNX for CPU encoding (once; cached in %s)", _SOURCES[model][0], folder)
        samples = ["embedforge encodes on a CPU", "a second, longer text so that the trace sees padding in a batch"]
        export_onnx(model, scratch / GRAPH_FILE, OPSET, samples, exporter=pick_exporter(ExportConfig(opset=OPSET)))
        try:
            scratch.rename(folder)
        except OSError:  # another process put the same graph there first
            if not (folder / GRAPH_FILE).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quantize(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantisation of ``src``, written atomically: int8 weights with one scale per output
    channel (one scale per tensor moves MiniLM's embeddings much further from fp32's), activations quantised per
    batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    log.info("quantising %s to int8 (once; cached as %s)", src, dst.name)
    logging.disable(logging.WARNING)  # the quantiser logs a line per tensor it leaves in float on the root logger
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)
    os.replace(tmp, dst)


# ------------------------------------------------------------------------------------------------ sessions
@lru_cache(maxsize=4)
def _session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers of the traced graph are noise
    # Idle pool threads sleep instead of spinning: on a machine whose cores are shared (other stages, other jobs)
    # spinning threads take the cores the working ones need; each batch is long enough that waking them is cheap.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def runtime_for(model: "SentenceTransformer", cfg: EncodeConfig, export: bool = True) -> Runtime | None:
    """An ONNX Runtime session of ``model``'s cached graph with ``cfg.threads`` (0: :func:`available_cores`); None
    when the graph is not cached yet and ``export`` is False.

    Raises:
        Unavailable: onnxruntime is not importable, or the graph cannot be made or loaded (remembered: a model
            whose export failed is not exported again in this process).
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"onnxruntime is not importable ({exc})") from None
    if model in _FAILED:
        raise Unavailable(_FAILED[model])
    threads = cfg.threads or available_cores()
    try:
        path = graph_for(model, cfg, export)
        if path is None:
            return None
        session = _session(str(path), threads)
    except Unavailable as exc:
        _FAILED[model] = str(exc)
        raise
    except Exception as exc:  # the exporter or onnxruntime failing on an unusual model: slower, never wrong
        first = str(exc).splitlines()[0] if str(exc) else ""
        _FAILED[model] = f"exporting it to ONNX failed: {type(exc).__name__}: {first}"
        raise Unavailable(_FAILED[model]) from None
    return Runtime(session=session, inputs=frozenset(i.name for i in session.get_inputs()), threads=threads,
                   precision="int8" if cfg.int8 else "fp32", path=path)


def encode_onnx(runtime: Runtime, model: "SentenceTransformer", texts: list[str], prompt: str, batch_size: int,
                show_progress: bool = False) -> np.ndarray:
    """Embed ``prompt + text`` for each text with ``runtime``: tokenised once, longest first, ``batch_size`` texts a
    batch. Returns float32 (n, dim), L2-normalised, in the order of ``texts``."""
    from tqdm.auto import tqdm

    from embedforge.onnx.signature import OUTPUT_NAME

    tok = model.tokenizer
    cap = int(model.max_seq_length or tok.model_max_length)
    ids = tok([prompt + t for t in texts] if prompt else list(texts), truncation=True, max_length=cap,
              padding=False, return_attention_mask=False)["input_ids"]
    order = np.argsort(-np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)), kind="stable")
    out: np.ndarray | None = None
    with tqdm(total=len(texts), desc="Encoding", disable=not show_progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="np")
            feed = {name: np.asarray(batch[name], dtype=np.int64) for name in ("input_ids", "attention_mask")
                    if name in runtime.inputs}
            (emb,) = runtime.session.run([OUTPUT_NAME], feed)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
            bar.update(len(idx))
    assert out is not None
    return out

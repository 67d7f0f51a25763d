"""Triton Inference Server model repository for the exported embedder: text in, embeddings out.

Layout written by :func:`write_model_repository` for model name ``<name>`` (``triton.model_name``)::

    <repo>/<name>/config.pbtxt                     ensemble: text (+ input_type) -> embeddings
    <repo>/<name>/<v>/served-config.pbtxt          the config that serves version <v> (copied to config.pbtxt)
    <repo>/<name>_tokenizer/config.pbtxt           Python backend: text -> input_ids, attention_mask
    <repo>/<name>_tokenizer/<v>/model.py           (embedforge/triton_tokenizer_model.py)
    <repo>/<name>_tokenizer/<v>/tokenizer/         the version's tokenizer files + prompts + max_seq_length
    <repo>/<name>_onnx/config.pbtxt                the embedder, tokens in (clients that tokenise themselves)
    <repo>/<name>_onnx/<v>/model.onnx              (+ external data; model.plan for tensorrt_plan)

The ensemble ``<name>`` takes ``text`` (TYPE_STRING ``[1]``) and the optional ``input_type`` (``query`` |
``passage``, choosing the saved prompt), runs the tokenizer model (the model's own ``tokenizer.json``, truncated
at the trained ``max_seq_length``) and the embedder, and returns ``embeddings`` (FP32 ``[dim]``, L2-normalised in
the graph). The embedder runs on the ``onnxruntime`` backend (optionally with ONNX Runtime's TensorRT execution
accelerator: FP16 and a shape profile from config), on a TensorRT plan, or — for Triton builds with only the
Python backend, such as the tests' server — through ``onnxruntime`` inside the Python backend, with the same
inputs and outputs.

Versions: every config pins ``version_policy { specific { versions: [v] } }`` and the ensemble's steps name
``model_version: v``, so the server serves exactly one version — the one :func:`serve_version` last wrote into
the three ``config.pbtxt`` files — not simply the highest folder. Older version folders stay in the repository,
each with the config that serves it (``served-config.pbtxt``), so a rollback only rewrites the three configs and
reloads. Triton reads only ``config.pbtxt`` at the model level and ignores files it does not know in a version
folder (the ONNX Runtime backend opens ``model.onnx``, the Python backend ``model.py``), and it ignores plain
files at the repository root, where promote keeps ``promotion.json`` and ``manifest.json``.

Every config is built as a ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``), printed in text
format and parsed back by :func:`validate_config`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from embedforge.config import TritonConfig
from embedforge.contracts import MANIFEST, ONNX_FILE, PARITY_FILE, atomic_write_text
from embedforge.errors import ConfigError, InputError
from embedforge.onnx.signature import (
    OUTPUT_NAME,
    REQUIRED_INPUTS,
    OnnxSignature,
    inspect_onnx,
)
from embedforge.onnx.variants import (
    FP16_ONNX_FILE,
    FP16_PARITY_FILE,
    PLAN_FILE,
    VARIANTS_FILE,
)
from embedforge.retrieval.dimensions import trained_dims

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
#: String parameter of the ensemble's and the embedder's configs: the Matryoshka dimensions the served model was
#: trained with, comma-separated (absent for a model trained without; :mod:`embedforge.retrieval.dimensions`).
DIMS_PARAMETER = "matryoshka_dims"
#: In each version folder: the config.pbtxt that serves that version (see the module docstring).
SERVED_CONFIG = "served-config.pbtxt"
TOKENIZER_DIR = "tokenizer"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
TEXT_INPUT = "text"
INPUT_TYPE = "input_type"
_MODEL_PY = {"tokenizer": "tokenizer_model.py", "python": "onnx_model.py"}
_BACKENDS = Path(__file__).with_name("backends")
#: Files of the export folder that are not tokenizer files (they are not copied into ``tokenizer/``).
_NOT_TOKENIZER = {ONNX_FILE, PARITY_FILE, MANIFEST, FP16_ONNX_FILE, FP16_PARITY_FILE, PLAN_FILE, VARIANTS_FILE}



@dataclass(frozen=True)
class ModelNames:
    """The three Triton models published for ``triton.model_name``."""

    ensemble: str
    tokenizer: str
    embedder: str

    @classmethod
    def of(cls, name: str) -> "ModelNames":
        return cls(ensemble=name, tokenizer=f"{name}_tokenizer", embedder=f"{name}_onnx")

    def all(self) -> tuple[str, str, str]:
        """In load order: the ensemble's steps first."""
        return (self.tokenizer, self.embedder, self.ensemble)


def _new_config(name: str, cfg: TritonConfig, version: str, parameters: dict[str, str] | None):
    from tritonclient.grpc import model_config_pb2 as mc

    conf = mc.ModelConfig(name=name, max_batch_size=cfg.max_batch_size)
    conf.version_policy.specific.versions.append(int(version))
    for key, value in sorted((parameters or {}).items()):
        conf.parameters[key].string_value = str(value)
    return conf


def _shapes(names: list[str], shape: tuple[int, int]) -> str:
    return ",".join(f"{n}:{shape[0]}x{shape[1]}" for n in names)


def _tensorrt_accelerator(conf, cfg: TritonConfig, input_names: list[str]) -> None:
    """ORT's TensorRT execution accelerator with FP16/FP32 and one shape profile (the ORT backend's keys)."""
    trt = conf.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    params = {
        "precision_mode": cfg.tensorrt_precision,
        "max_workspace_size_bytes": str(cfg.tensorrt_workspace_bytes),
        "trt_profile_min_shapes": _shapes(input_names, cfg.tensorrt_min_shape),
        "trt_profile_opt_shapes": _shapes(input_names, cfg.tensorrt_opt_shape),
        "trt_profile_max_shapes": _shapes(input_names, cfg.tensorrt_max_shape),
    }
    if cfg.tensorrt_cache_dir:
        params.update(trt_engine_cache_enable="true", trt_engine_cache_path=cfg.tensorrt_cache_dir)
    for key, value in params.items():
        trt.parameters[key] = value


def build_config(sig: OnnxSignature, cfg: TritonConfig, parameters: dict[str, str] | None = None,
                 version: str | int = 1, name: str | None = None) -> str:
    """The embedder's ``config.pbtxt`` (tokens in, embeddings out), validated before it is returned.

    Args:
        sig: The graph's signature (:func:`inspect_onnx`).
        cfg: Triton settings: backend, batching, instance kind, TensorRT accelerator.
        parameters: Extra string parameters (provenance, prompts); backends ignore keys they do not know.
        version: The one version this config serves.
        name: Model name (default: ``<cfg.model_name>_onnx``).
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    conf = _new_config(name or ModelNames.of(cfg.model_name).embedder, cfg, str(version), parameters)
    if cfg.embedder_backend == "onnxruntime":
        conf.platform, conf.backend = PLATFORM, BACKEND
    elif cfg.embedder_backend == "tensorrt_plan":
        conf.platform, conf.backend = "tensorrt_plan", "tensorrt"
    else:
        conf.backend = "python"
    for t in sig.inputs:
        conf.input.add(name=t.name, data_type=mc.DataType.Value(t.data_type), dims=t.dims)
    conf.output.add(name=sig.output.name, data_type=mc.DataType.Value(sig.output.data_type), dims=sig.output.dims)
    conf.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    conf.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(cfg.instance_kind), count=1)
    if cfg.tensorrt:
        _tensorrt_accelerator(conf, cfg, [t.name for t in sig.inputs])
    text = text_format.MessageToString(conf)
    validate_config(text)
    return text


def build_tokenizer_config(cfg: TritonConfig, version: str | int) -> str:
    """The tokenizer model's ``config.pbtxt``: Python backend on CPU, text (+ input_type) -> token ids."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    conf = _new_config(ModelNames.of(cfg.model_name).tokenizer, cfg, str(version), None)
    conf.backend = "python"
    conf.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    conf.input.add(name=INPUT_TYPE, data_type=mc.TYPE_STRING, dims=[1], optional=True)
    for name in REQUIRED_INPUTS:
        conf.output.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    conf.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    conf.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    text = text_format.MessageToString(conf)
    validate_config(text)
    return text


def build_ensemble_config(sig: OnnxSignature, cfg: TritonConfig, version: str | int,
                          parameters: dict[str, str] | None = None) -> str:
    """The ensemble ``<name>``: text (+ input_type) -> tokenizer v -> embedder v -> embeddings."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    names = ModelNames.of(cfg.model_name)
    conf = _new_config(names.ensemble, cfg, str(version), parameters)
    conf.platform = "ensemble"
    conf.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    conf.input.add(name=INPUT_TYPE, data_type=mc.TYPE_STRING, dims=[1], optional=True)
    conf.output.add(name=OUTPUT_NAME, data_type=mc.DataType.Value(sig.output.data_type), dims=sig.output.dims)
    tok = conf.ensemble_scheduling.step.add(model_name=names.tokenizer, model_version=int(version))
    tok.input_map[TEXT_INPUT] = TEXT_INPUT
    tok.input_map[INPUT_TYPE] = INPUT_TYPE
    emb = conf.ensemble_scheduling.step.add(model_name=names.embedder, model_version=int(version))
    for name in REQUIRED_INPUTS:
        tok.output_map[name] = f"_{name}"
        emb.input_map[name] = f"_{name}"
    emb.output_map[OUTPUT_NAME] = OUTPUT_NAME
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


def _copy_version(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` folder to its numeric name (a half-copied version never appears)."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _embedder_files(onnx_dir: Path, cfg: TritonConfig, sig: OnnxSignature) -> dict[str, Path]:
    """Files of the embedder's version folder: name in the folder -> source."""
    if cfg.embedder_backend == "tensorrt_plan":
        plan = onnx_dir / PLAN_FILE
        if not plan.is_file():
            raise InputError(f"triton.embedder_backend=tensorrt_plan but {plan} does not exist: export with "
                             "export.tensorrt_plan=true on a machine where the tensorrt package is importable")
        return {PLAN_FILE: plan, ONNX_FILE: onnx_dir / ONNX_FILE}  # the graph: the rollout probe's reference
    graph = onnx_dir / (FP16_ONNX_FILE if cfg.precision == "fp16" else ONNX_FILE)
    if not graph.is_file():
        raise InputError(f"triton.precision={cfg.precision} needs {graph}: export with export.fp16=true")
    files = {ONNX_FILE: graph, **{n: onnx_dir / n for n in sig.external_data}}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise InputError(f"{onnx_dir / ONNX_FILE} stores weights in {missing}, which are not in {onnx_dir}")
    if cfg.embedder_backend == "python":
        files["model.py"] = _BACKENDS / _MODEL_PY["python"]
    return files


def write_model_repository(
    onnx_dir: str | Path,
    repo_dir: str | Path,
    cfg: TritonConfig,
    version: str | int,
    parameters: dict[str, str] | None = None,
    serve: bool = True,
) -> Path:
    """Add ``version`` of the exported model (ensemble, tokenizer, embedder) to the repository at ``repo_dir``.

    Other versions already in the repository are kept. With ``serve`` the three ``config.pbtxt`` are switched to
    this version (:func:`serve_version`); without, the version is only staged beside the served one.

    Args:
        onnx_dir: The export folder: ``model.onnx`` (+ external data, ``model_fp16.onnx``, ``model.plan``),
            tokenizer files, ``config_sentence_transformers.json`` (prompts), ``sentence_bert_config.json``.
        repo_dir: Repository root (created if missing).
        cfg: Triton settings.
        version: Triton version number (the registered model version, a positive integer).
        parameters: Extra string parameters (provenance) for the ensemble's and the embedder's configs.
        serve: Switch the configs to this version.

    Returns:
        The ensemble's version folder ``<repo_dir>/<cfg.model_name>/<version>``.

    Raises:
        InputError: Bad export folder or version.
        ConfigError: A generated configuration does not validate.
    """
    onnx_dir, repo_dir = Path(onnx_dir), Path(repo_dir)
    if not str(version).isdigit() or int(version) < 1:
        raise InputError(f"Triton model versions are positive integers, got {version!r}")
    v = str(int(version))
    sig = inspect_onnx(onnx_dir / ONNX_FILE)
    extra = [t.name for t in sig.inputs if t.name not in REQUIRED_INPUTS]
    if extra:
        raise InputError(f"{onnx_dir / ONNX_FILE} takes inputs {extra} besides {list(REQUIRED_INPUTS)}: the "
                         "tokenizer step produces only those; re-export with the embedforge export stage")
    if not (onnx_dir / "tokenizer.json").is_file():
        raise InputError(f"{onnx_dir} has no tokenizer.json: the tokenizer model needs the fast tokenizer's file")
    params = {"embedding_dim": str(sig.dim), "normalized": "true", "precision": cfg.precision}
    params.update(_prompts(onnx_dir))
    if dims := trained_dims(onnx_dir):  # Matryoshka: the API lists the dimensions the model was trained to serve
        params[DIMS_PARAMETER] = ",".join(str(d) for d in dims)
    params.update(parameters or {})
    names = ModelNames.of(cfg.model_name)
    configs = {
        names.ensemble: build_ensemble_config(sig, cfg, v, params),
        names.tokenizer: build_tokenizer_config(cfg, v),
        names.embedder: build_config(sig, cfg, params, v),
    }
    embedder_files = _embedder_files(onnx_dir, cfg, sig)
    # External-data weights of either graph (model.onnx.data, model_fp16.onnx.data) are not tokenizer files.
    skip = _NOT_TOKENIZER | set(sig.external_data) | {p.name for p in onnx_dir.glob("*.onnx.data")}
    for model, text in configs.items():
        tmp = _fresh(repo_dir / model / f".{v}.tmp")
        (tmp / SERVED_CONFIG).write_text(text, encoding="utf-8")
        if model == names.tokenizer:
            shutil.copy2(_BACKENDS / _MODEL_PY["tokenizer"], tmp / "model.py")
            (tmp / TOKENIZER_DIR).mkdir()
            for p in sorted(onnx_dir.iterdir()):
                if p.is_file() and p.name not in skip and not p.name.startswith("."):
                    shutil.copy2(p, tmp / TOKENIZER_DIR / p.name)
        elif model == names.embedder:
            for name, src in embedder_files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / name)
        _copy_version(tmp, repo_dir / model / v)
    if serve:
        serve_version(repo_dir, cfg.model_name, v)
    log.info("Triton repository %s: %s version %s (dim %d, embedder %s)", repo_dir, cfg.model_name, v, sig.dim,
             cfg.embedder_backend)
    return repo_dir / names.ensemble / v


def serve_version(repo_dir: str | Path, model_name: str, version: str | int) -> None:
    """Point the three ``config.pbtxt`` of ``model_name`` at ``version`` (its stored ``served-config.pbtxt``).

    Raises:
        InputError: The version is not (completely) in the repository.
    """
    repo_dir = Path(repo_dir)
    v = str(int(version))
    names = ModelNames.of(model_name).all()
    missing = [f"{n}/{v}" for n in names if not (repo_dir / n / v / SERVED_CONFIG).is_file()]
    if missing:
        raise InputError(f"version {v} of {model_name!r} is not in the model repository {repo_dir} (missing "
                         f"{', '.join(missing)}); promote it again to publish it")
    for name in names:
        atomic_write_text(repo_dir / name / CONFIG_FILE, (repo_dir / name / v / SERVED_CONFIG).read_text("utf-8"))


def served_version(repo_dir: str | Path, model_name: str) -> str | None:
    """The version the repository's ensemble config serves (None without one)."""
    path = Path(repo_dir) / model_name / CONFIG_FILE
    if not path.is_file():
        return None
    versions = list(validate_config(path.read_text(encoding="utf-8")).version_policy.specific.versions)
    return str(versions[0]) if len(versions) == 1 else None


def prune_versions(repo_dir: str | Path, model_name: str, keep: set[str], keep_newest: int) -> list[str]:
    """Delete the version folders of ``model_name``'s three models except ``keep`` and the ``keep_newest`` newest
    others, so a repository promoted into for months does not grow without bound; the served version is always
    kept. Returns the versions deleted, oldest first."""
    repo_dir = Path(repo_dir)
    names = ModelNames.of(model_name).all()
    keep = {str(int(v)) for v in keep if v} | ({served} if (served := served_version(repo_dir, model_name)) else set())
    present = sorted({p.name for n in names if (repo_dir / n).is_dir() for p in (repo_dir / n).iterdir()
                      if p.is_dir() and p.name.isdigit()}, key=int)
    others = [v for v in present if v not in keep]
    doomed = others[: max(0, len(others) - keep_newest)]
    for v in doomed:
        for name in names:
            shutil.rmtree(repo_dir / name / v, ignore_errors=True)
    return doomed

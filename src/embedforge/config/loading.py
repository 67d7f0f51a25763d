"""``load_config``: defaults < YAML file < ``KEY=VALUE`` overrides, errors naming the dotted field; and
:func:`write_config`, the one way a config is written for another process to ``load_config`` it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from embedforge.config.pipeline import ModelConfig, PipelineConfig, PromptsConfig
from embedforge.config.train import TrainConfig
from embedforge.errors import ConfigError


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


def _read_text(path: Path) -> str:
    """The config file as text: UTF-8 (a BOM allowed); anything else fails naming the file, line and byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"config file {path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
                          f"{column}): save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **top: Any) -> PipelineConfig:
    """Build a validated ``PipelineConfig`` from an optional YAML file, ``KEY=VALUE`` overrides and keywords."""
    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(_read_text(p)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (ingest:, train:, ...)")
        tree = loaded
    tree = _merge(tree, parse_overrides(overrides or []))
    tree = _merge(tree, {k: v for k, v in top.items() if v is not None})
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(  # a whole-config check has no field path; pydantic prefixes its own "Value error, "
            ": ".join(filter(None, (".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, "))))
            for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}: {problems}") from None



def train_worker_config(train: TrainConfig, base_model: str, prompts: PromptsConfig | None = None,
                        model: ModelConfig | None = None) -> PipelineConfig:
    """The config a training worker (a torchrun process, a TrainJob node) loads: the train stage's sections."""
    return PipelineConfig(base_model=base_model, prompts=prompts or PromptsConfig(), model=model or ModelConfig(),
                          train=train)


def write_config(path: str | Path, cfg: PipelineConfig) -> Path:
    """Write ``cfg`` as YAML that :func:`load_config` reads back unchanged (``to_dict``: by alias, no nulls).

    The train stage hands its workers (torchrun processes, TrainJob nodes) their settings this way: one writer,
    one reader, the same typed config on both sides.
    """
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path

"""A configuration as commented YAML: every field's value under its section, each preceded by its pydantic
``description`` as a comment (what ``embedforge config show`` prints).

The YAML part is exactly :meth:`PipelineConfig.to_dict` (keys by alias: ``validate``, ``register``), so the printed
text, comments and all, is a config file ``--config`` reads back to the same configuration.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

#: Width of the comment lines.
WIDTH = 100


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), WIDTH - len(indent) - 2)]


def _scalar(value: Any) -> str:
    """``value`` as one line of YAML flow syntax (a string keeps its trailing spaces: it is quoted then)."""
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9).strip().removesuffix("...").strip()


def describe(model: BaseModel, indent: str = "") -> list[str]:
    """Lines of commented YAML for ``model`` (nested sections indented by two spaces)."""
    data = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        if field.exclude:
            continue
        if field.description:
            lines += _comment(field.description, indent)
        if key not in data:  # None: left unset (a file leaves it out)
            lines.append(f"{indent}# {key}: (unset)")
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{key}:")
            lines += describe(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_scalar(data[key])}")
    return lines


def describe_config(model: BaseModel) -> str:
    """The whole of ``model`` as commented YAML text."""
    return "\n".join(describe(model)) + "\n"


__all__ = ["describe", "describe_config"]

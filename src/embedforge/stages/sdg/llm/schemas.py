"""Pydantic models of the LLM's structured replies, their JSON schemas, and a tolerant JSON parser.

Each stage's reply is validated with a *context* naming what this particular prompt allows (how many segments
it numbered, which query/reasoning types were asked for), so an out-of-range segment id is a validation error
the repair request can name, not a silently wrong positive.

=================  ===========================================================================================
stage              model
=================  ===========================================================================================
artifacts          :class:`Artifacts` — up to N items of each of :data:`ARTIFACT_TYPES`
qa                 :class:`QAResponse` — ``pairs``: list of :class:`QAPair` (with :class:`HopContext` hops)
judge              :class:`Judgement` — relevance, accuracy, context_support, clarity, overall (1–10)
=================  ===========================================================================================
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

ARTIFACT_TYPES: tuple[str, ...] = (
    "key_concepts", "relationships", "themes", "entities", "processes", "insights", "technical_terms",
    "contextual_factors",
)
JUDGE_CRITERIA: tuple[str, ...] = ("relevance", "accuracy", "context_support", "clarity", "overall")


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------------------------------------ artifacts
class ArtifactItem(_Reply):
    name: str = Field(min_length=1, description="Short label.")
    description: str = Field("", description="One sentence grounded in the segments.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class Artifacts(_Reply):
    key_concepts: list[ArtifactItem] = Field(default_factory=list)
    relationships: list[ArtifactItem] = Field(default_factory=list)
    themes: list[ArtifactItem] = Field(default_factory=list)
    entities: list[ArtifactItem] = Field(default_factory=list)
    processes: list[ArtifactItem] = Field(default_factory=list)
    insights: list[ArtifactItem] = Field(default_factory=list)
    technical_terms: list[ArtifactItem] = Field(default_factory=list)
    contextual_factors: list[ArtifactItem] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _some_known_type(cls, v: Any) -> Any:
        if isinstance(v, dict) and not any(t in v for t in ARTIFACT_TYPES):
            raise ValueError(f"expected an object with the keys {', '.join(ARTIFACT_TYPES)}")
        return v

    def truncated(self, n: int) -> Artifacts:
        """A copy keeping at most ``n`` items per type."""
        return Artifacts(**{t: getattr(self, t)[:n] for t in ARTIFACT_TYPES})

    def count(self) -> int:
        return sum(len(getattr(self, t)) for t in ARTIFACT_TYPES)


# ---------------------------------------------------------------------------------------------------- QA
def _norm_label(v: Any) -> Any:
    return v.strip().lower().replace("-", "_").replace(" ", "_") if isinstance(v, str) else v


def _check_segments(ids: list[int], info: ValidationInfo) -> list[int]:
    n = (info.context or {}).get("n_segments")
    if n is not None:
        bad = [i for i in ids if not 1 <= i <= n]
        if bad:
            raise ValueError(f"segment ids {bad} do not exist; segments are numbered 1..{n}")
    return ids


class HopContext(_Reply):
    hop_number: int = Field(1, description="Renumbered 1..n after parsing.")
    segment_ids: list[int] = Field(min_length=1)
    summary: str = Field("", description="What this hop contributes to the answer.")

    @field_validator("segment_ids")
    @classmethod
    def _segments_exist(cls, v: list[int], info: ValidationInfo) -> list[int]:
        return _check_segments(v, info)


class QAPair(_Reply):
    question: str = Field(min_length=3)
    answer: str = Field(min_length=1)
    query_type: str
    reasoning_type: str
    question_complexity: int = Field(ge=1, le=5)
    segment_ids: list[int] = Field(default_factory=list)
    hop_count: int = Field(1, description="Recomputed as len(hop_contexts) after parsing.")
    hop_contexts: list[HopContext] = Field(default_factory=list)

    @field_validator("query_type", "reasoning_type", mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return _norm_label(v)

    @field_validator("query_type", "reasoning_type")
    @classmethod
    def _known_label(cls, v: str, info: ValidationInfo) -> str:
        """The label must be one the prompt offered: context ``query_types`` / ``reasoning_types``."""
        allowed = (info.context or {}).get(f"{info.field_name}s")
        if allowed and v not in allowed:
            raise ValueError(f"{info.field_name} {v!r} is not one of {sorted(allowed)}")
        return v

    @field_validator("segment_ids")
    @classmethod
    def _segments_exist(cls, v: list[int], info: ValidationInfo) -> list[int]:
        return _check_segments(v, info)

    @model_validator(mode="after")
    def _has_segments(self) -> QAPair:
        if not self.segment_ids and not self.hop_contexts:
            raise ValueError("a pair needs segment_ids (or hop_contexts listing them)")
        return self

    def normalised(self, max_hops: int) -> QAPair:
        """segment_ids = union over hops (for any pair with hops), hops renumbered 1..n, hop_count = len(hops)."""
        hops = [
            HopContext.model_construct(hop_number=i + 1, segment_ids=sorted(set(h.segment_ids)), summary=h.summary)
            for i, h in enumerate(self.hop_contexts[:max_hops])
        ]
        if hops:
            seg = sorted({s for h in hops for s in h.segment_ids})
        else:
            seg = sorted(set(self.segment_ids))
        return self.model_copy(update={
            "segment_ids": seg, "hop_contexts": hops, "hop_count": max(1, len(hops)),
            "question": self.question.strip(), "answer": self.answer.strip(),
        })


class QAResponse(_Reply):
    pairs: list[QAPair] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            return {"pairs": v}
        if isinstance(v, dict) and "pairs" not in v and len(v) == 1 and isinstance(next(iter(v.values())), list):
            return {"pairs": next(iter(v.values()))}  # {"qa_pairs": [...]} and similar
        return v


# ------------------------------------------------------------------------------------------------ judge
class Judgement(_Reply):
    relevance: float = Field(ge=1, le=10)
    accuracy: float = Field(ge=1, le=10)
    context_support: float = Field(ge=1, le=10)
    clarity: float = Field(ge=1, le=10)
    overall: float = Field(ge=1, le=10)
    rationale: str = ""

    def scores(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in JUDGE_CRITERIA}


# ----------------------------------------------------------------------------------------- JSON schemas
def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$defs``/``$ref`` and drop titles/defaults: some grammar engines handle neither."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items() if k not in ("$defs", "title", "default")}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(schema)


def json_schema(model: type[BaseModel], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON schema sent as ``response_format``, narrowed by ``context`` (enums, segment-id bounds)."""
    schema = _inline_refs(model.model_json_schema())
    ctx = context or {}

    def patch(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties", {})
            if props:  # constrained decoders then emit every field (parsing stays tolerant of missing ones)
                node["required"] = list(props)
                node["additionalProperties"] = False
            if "query_type" in props and ctx.get("query_types"):
                props["query_type"] = {"type": "string", "enum": sorted(ctx["query_types"])}
            if "reasoning_type" in props and ctx.get("reasoning_types"):
                props["reasoning_type"] = {"type": "string", "enum": sorted(ctx["reasoning_types"])}
            if ctx.get("max_items"):  # artifacts: N items per type
                for t in ARTIFACT_TYPES:
                    if t in props:
                        props[t]["maxItems"] = int(ctx["max_items"])
            if "pairs" in props and ctx.get("max_pairs"):
                props["pairs"]["maxItems"] = int(ctx["max_pairs"])
            if "hop_contexts" in props and ctx.get("max_hops"):
                props["hop_contexts"]["maxItems"] = int(ctx["max_hops"])
            if "segment_ids" in props:
                props["segment_ids"]["minItems"] = 1
                if ctx.get("n_segments"):
                    props["segment_ids"]["items"] = {"type": "integer", "minimum": 1, "maximum": int(ctx["n_segments"])}
            for v in node.values():
                patch(v)
        elif isinstance(node, list):
            for v in node:
                patch(v)

    patch(schema)
    return schema


# ------------------------------------------------------------------------------------------ tolerant parse
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class JsonNotFound(ValueError):
    """The reply holds no parseable JSON value."""


def extract_json(text: str) -> Any:
    """The first JSON object/array in an LLM reply: tolerates reasoning blocks, code fences, prose around it,
    trailing commas and a reply cut short inside a trailing string (never guesses missing structure)."""
    if text is None:
        raise JsonNotFound("empty reply")
    body = _THINK.sub("", text)
    body = re.sub(r"^.*?</think>", "", body, flags=re.DOTALL | re.IGNORECASE) if "</think>" in body.lower() else body
    candidates = [m.group(1) for m in _FENCE.finditer(body)] + [body]
    decoder = json.JSONDecoder()
    for cand in candidates:
        cand = cand.strip()
        for variant in (cand, _TRAILING_COMMA.sub(r"\1", cand)):
            try:
                return json.loads(variant)
            except json.JSONDecodeError:
                pass
            for start in [m.start() for m in re.finditer(r"[\[{]", variant)][:20]:
                try:
                    obj, _ = decoder.raw_decode(variant, start)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, (dict, list)):
                    return obj
    raise JsonNotFound("no JSON object found in the reply")

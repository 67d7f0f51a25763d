"""What an LLM backend receives, returns and raises: the contract between :class:`~embedforge.stages.sdg.llm.client.LlmClient`
and the backends (:class:`~embedforge.stages.sdg.llm.openai_backend.OpenAIBackend`,
:class:`~embedforge.stages.sdg.llm.local_backend.LocalBackend`), kept apart so neither side imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from embedforge.config import LlmStageSettings
    from embedforge.stages.sdg.llm.prompts import Message

# json_object carries the schema too (llama.cpp, Together, Anyscale constrain decoding with it; others ignore it);
# json_object_plain drops it for servers that refuse the extra key.
MODES = ("json_schema", "json_object", "json_object_plain", "none")


# ------------------------------------------------------------------------------------------------- errors
class RequestError(Exception):
    """A request (or a whole structured call) that did not produce a usable reply. ``stage`` is set by the unit
    processor to the SDG stage the request belonged to (None until then)."""

    kind = "request_failed"
    stage: str | None = None


class RequestFailed(RequestError):
    """Retries exhausted or a non-retryable error: recorded as a failure of the document."""

    def __init__(self, message: str, kind: str = "request_failed"):
        super().__init__(message)
        self.kind = kind


class FatalEndpointError(RequestError):
    """Authentication, permission or not-found: every request would fail the same way; the run stops."""

    kind = "fatal"


class Retryable(Exception):
    """Raised by a backend for a transient error; ``retry_after`` in seconds when the server said."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class UnsupportedFormat(Exception):
    """The endpoint refused the ``response_format`` sent."""


# ------------------------------------------------------------------------------------------------ backend
@dataclass
class Completion:
    """One reply: its text, why generation stopped (``length`` = cut at ``max_tokens``) and token usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class StageSettings:
    """A stage's settings with the model resolved."""

    stage: str
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    timeout_s: float

    @classmethod
    def resolve(cls, stage: str, s: LlmStageSettings, default_model: str) -> StageSettings:
        return cls(stage, s.model or default_model, s.temperature, s.top_p, s.max_tokens, s.timeout_s)


class Backend(Protocol):
    """A chat-completion backend; :class:`~embedforge.stages.sdg.llm.client.LlmClient` adds retries, budget and parsing."""

    name: str
    modes: tuple[str, ...]  # structured-output modes it can be asked for, best first
    model_label: str | None  # the model stages use when they name none (local backend: its model file), else None

    async def chat(self, messages: list[Message], settings: StageSettings, response_format: dict | None) -> Completion:
        """One completion; raises :class:`Retryable`, :class:`UnsupportedFormat`, :class:`FatalEndpointError`
        or :class:`RequestFailed`."""
        ...

    async def close(self) -> None: ...


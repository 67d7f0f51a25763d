"""The HTTP backend: any OpenAI-compatible ``/chat/completions`` endpoint (build.nvidia.com, NIM, vLLM,
llama.cpp) through the official async SDK, with the SDK's own retries off (:class:`~embedforge.stages.sdg.llm.client.LlmClient`
retries). HTTP errors become the exceptions of :mod:`embedforge.stages.sdg.llm.backends`: 429/5xx/408/409, timeouts,
connection errors and unparseable bodies are :class:`Retryable` (with ``Retry-After`` when the server sent it);
a refused ``response_format`` is :class:`UnsupportedFormat`; 401/403/404 are :class:`FatalEndpointError`; any
other 4xx is :class:`RequestFailed`.
"""

from __future__ import annotations

import email.utils
import os
import time
from typing import TYPE_CHECKING, Any

from embedforge.redact import redact
from embedforge.stages.sdg.llm.backends import (
    MODES,
    Completion,
    FatalEndpointError,
    RequestFailed,
    Retryable,
    StageSettings,
    UnsupportedFormat,
)

if TYPE_CHECKING:
    from embedforge.config import LlmSdgConfig
    from embedforge.stages.sdg.llm.prompts import Message

MAX_RETRY_AFTER_S = 600.0


def resolve_api_key(cfg: LlmSdgConfig) -> tuple[str | None, str | None]:
    """``(key, env var name it came from)`` from ``api_key_env``, else ``fallback_api_key_env``."""
    for name in (cfg.api_key_env, cfg.fallback_api_key_env):
        if name and os.environ.get(name):
            return os.environ[name], name
    return None, None


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date); None when absent/invalid."""
    if headers is None:
        return None
    for name, div in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, min(float(value) / div, MAX_RETRY_AFTER_S))
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, min(email.utils.mktime_tz(parsed) - time.time(), MAX_RETRY_AFTER_S))
    return None


_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "guided", "structured")


class OpenAIBackend:
    """Any OpenAI-compatible ``/chat/completions`` endpoint via the official async SDK (its own retries off)."""

    name = "openai"
    modes = MODES
    model_label = None  # every stage names the endpoint's model (``sdg.llm.model`` or the stage's own)

    def __init__(self, base_url: str, api_key: str | None):
        from openai import AsyncOpenAI

        # Local servers (llama.cpp, vLLM without --api-key) need no key, the SDK needs a non-empty string.
        self._client = AsyncOpenAI(base_url=base_url, api_key=api_key or "no-key", max_retries=0)
        self.base_url = redact(base_url)  # shown in messages only (the client above holds the real URL)

    async def chat(self, messages: list[Message], settings: StageSettings, response_format: dict | None) -> Completion:
        import openai

        kwargs: dict[str, Any] = dict(
            model=settings.model, messages=messages, temperature=settings.temperature, top_p=settings.top_p,
            max_tokens=settings.max_tokens, timeout=settings.timeout_s,
        )
        if response_format is not None:
            kwargs["response_format"] = response_format
        try:
            resp = await self._client.chat.completions.create(**kwargs)
        except openai.APITimeoutError as exc:
            raise Retryable("timeout", f"no reply within {settings.timeout_s}s") from exc
        except openai.APIConnectionError as exc:
            raise Retryable("connection", f"cannot reach {self.base_url}: {exc}") from exc
        except openai.APIResponseValidationError as exc:
            raise Retryable("bad_response", f"unparseable HTTP response: {exc}") from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            text = _error_text(exc)
            low = text.lower()
            if response_format is not None and (
                    (status in (400, 422) and any(w in low for w in _FORMAT_WORDS))
                    or (status == 500 and "response_format" in low)):  # llama-cpp-python answers 500 to a bad request
                raise UnsupportedFormat(f"{status}: {text}") from exc
            if status == 429:
                raise Retryable("rate_limited", f"429: {text}", parse_retry_after(exc.response.headers)) from exc
            if status >= 500 or status in (408, 409):
                raise Retryable("server_error", f"{status}: {text}", parse_retry_after(exc.response.headers)) from exc
            if status in (401, 403):
                raise FatalEndpointError(
                    f"{self.base_url} refused the credentials ({status}): set the API key in the environment "
                    f"variable named by sdg.llm.api_key_env") from exc
            if status == 404:
                raise FatalEndpointError(
                    f"{self.base_url} answered 404 for model {settings.model!r}: check sdg.llm.base_url and the "
                    f"model name ({text})") from exc
            raise RequestFailed(f"{status}: {text}", kind="http_error") from exc
        except (ValueError, TypeError) as exc:  # a 200 whose body the SDK could not decode
            raise Retryable("bad_response", f"unparseable HTTP response: {exc}") from exc
        if not getattr(resp, "choices", None):
            raise Retryable("bad_response", "reply has no choices")
        choice = resp.choices[0]
        content = getattr(choice.message, "content", None) if choice.message is not None else None
        if content is None:
            raise Retryable("bad_response", "reply has no message content")
        usage = getattr(resp, "usage", None)
        return Completion(
            text=content, finish_reason=choice.finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def close(self) -> None:
        await self._client.close()


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    msg: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        msg = msg or body.get("message") or body.get("detail")
    elif isinstance(body, str):
        msg = body
    return str(msg or getattr(exc, "message", exc))[:500]

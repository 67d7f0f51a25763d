"""The HTTP backend: any OpenAI-compatible ``/chat/completions`` endpoint (build.nvidia.com, NIM, vLLM,
llama.cpp) through the official async SDK, with the SDK's own retries off (:class:`~embedforge.stages.sdg.llm.client.LlmClient`
retries). HTTP errors become the exceptions of :mod:`embedforge.stages.sdg.llm.backends`: 429/5xx/408/409, timeouts,
connection errors and unparseable bodies are :class:`Retryable` (with ``Retry-After`` when the server sent it);
a refused ``response_format`` is :class:`UnsupportedFormat`; 401/403/404 are :class:`FatalEndpointError`; any
other 4xx is :class:`RequestFailed`.

A request's ``timeout_s`` is a total deadline, from sending it to the last byte of the reply: the SDK's own
timeout restarts with every byte read, so a server that trickles its reply would hold a request for as long as it
likes. Every text a server sent back passes through :func:`~embedforge.redact.redact` before it reaches a message
(the API key, registered with it when read, is hidden even when an error body echoes the header).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from embedforge.redact import add_secret, looks_secret, redact
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
    """``(key, env var name it came from)`` from ``api_key_env``, else ``fallback_api_key_env``. The key is
    registered with :func:`~embedforge.redact.add_secret`, so no message of this process can show it."""
    for name in (cfg.api_key_env, cfg.fallback_api_key_env):
        if name and os.environ.get(name):
            add_secret(os.environ[name])
            return os.environ[name], name
    return None, None


def client_args(url: str) -> dict[str, Any]:
    """``base_url`` (and ``default_query``) of the SDK client for an endpoint URL: query parameters of the URL
    (``?api_key=...``, ``?api-version=...``) are sent with every request — the SDK would otherwise glue the request
    path after them. Credentials in the URL are registered with :func:`~embedforge.redact.add_secret`."""
    parts = urlsplit(url)
    if parts.password:
        add_secret(parts.password)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in query.items():
        if looks_secret(name):
            add_secret(value)
    if not query:
        return {"base_url": url}
    return {"base_url": urlunsplit(parts._replace(query="", fragment="")), "default_query": query}


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
        self._client = AsyncOpenAI(api_key=api_key or "no-key", max_retries=0, **client_args(base_url))
        self.base_url = redact(base_url)  # shown in messages only (the client above holds the real URL)

    async def chat(self, messages: list[Message], settings: StageSettings, response_format: dict | None) -> Completion:
        import openai

        kwargs: dict[str, Any] = dict(
            model=settings.model, messages=messages, temperature=settings.temperature, top_p=settings.top_p,
            max_tokens=settings.max_tokens, timeout=settings.timeout_s,
        )
        if response_format is not None:
            kwargs["response_format"] = response_format
        try:  # the deadline cancels the request (and closes its connection) however slowly bytes arrive
            resp = await asyncio.wait_for(self._client.chat.completions.create(**kwargs), settings.timeout_s)
        except (asyncio.TimeoutError, openai.APITimeoutError) as exc:
            raise Retryable("timeout", f"no reply within {settings.timeout_s:g}s") from exc
        except openai.APIConnectionError as exc:
            raise Retryable("connection", f"cannot reach {self.base_url}: {redact(str(exc))}") from exc
        except openai.APIResponseValidationError as exc:
            raise Retryable("bad_response", f"unparseable HTTP response: {redact(str(exc))[:300]}") from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            text = error_text(exc)
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
        except (ValueError, TypeError, AttributeError) as exc:  # a 200 whose body the SDK could not decode
            raise Retryable("bad_response", f"unparseable HTTP response: {redact(str(exc))[:300]}") from exc
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


def error_text(exc: Any) -> str:
    """What an endpoint said in an error reply (its ``error.message`` or body), on one line, redacted, at most 500
    characters: safe to put in a message even when the server echoes the request's credentials."""
    body = getattr(exc, "body", None)
    msg: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        msg = msg or body.get("message") or body.get("detail")
    elif isinstance(body, str):
        msg = body
    return redact(" ".join(str(msg or getattr(exc, "message", exc)).split()))[:500]

"""Async LLM client: bounded concurrency, retries with backoff, a request budget, usage accounting and
structured output (JSON schema where the endpoint supports it, tolerant parse + one repair request otherwise).

Two backends implement :class:`~embedforge.stages.sdg.llm.backends.Backend`:
:class:`~embedforge.stages.sdg.llm.openai_backend.OpenAIBackend` (any OpenAI-compatible endpoint through the official
SDK: build.nvidia.com, NIM, vLLM, llama.cpp) and :class:`~embedforge.stages.sdg.llm.local_backend.LocalBackend`
(transformers in-process); :func:`make_backend` picks one from the config.

Error policy of one request:

==========================================  =================================================================
429                                         wait ``Retry-After`` (``retry-after-ms``/seconds/HTTP date) or
                                            backoff; all new requests also wait until then; retried
5xx, 408, 409, timeout (``timeout_s``: a    exponential backoff with jitter, retried up to ``max_retries``
total deadline per request), connection
error, unparseable HTTP body
400/422 naming response_format/schema       (structured_output=auto) fall back json_schema -> json_object
                                            with schema -> json_object -> prompt-only, remembered per model
401, 403, 404                               :class:`FatalEndpointError`: the run stops (bad key/model/URL)
other 4xx                                   :class:`RequestFailed` for that document
budget spent                                :class:`BudgetExhausted` (no request sent)
max_consecutive_failures documents in a     the generator stops the run, naming the endpoint and the last
row failed without a reply                  error (``embedforge.stages.sdg.llm.LlmGenerator``)
==========================================  =================================================================
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from embedforge.stages.sdg.llm.backends import (
    MODES,
    Backend,
    Completion,
    RequestError,
    RequestFailed,
    Retryable,
    StageSettings,
    UnsupportedFormat,
)
from embedforge.stages.sdg.llm.local_backend import LocalBackend
from embedforge.stages.sdg.llm.openai_backend import OpenAIBackend, resolve_api_key
from embedforge.stages.sdg.llm.schemas import JsonNotFound, extract_json, json_schema

if TYPE_CHECKING:
    from embedforge.config import LlmSdgConfig
    from embedforge.stages.sdg.llm.prompts import Message, PromptSet

log = logging.getLogger(__name__)

STAGES = ("artifacts", "qa", "judge")


# ------------------------------------------------------------------------------------------------- errors
class BudgetExhausted(RequestError):
    """``sdg.llm.request_budget`` is spent; no request was sent (the unit is left for a rerun)."""

    kind = "budget_exhausted"


class StructuredOutputError(RequestError):
    """The reply (and the one repair reply) failed to parse/validate."""

    kind = "invalid_output"

    def __init__(self, message: str, raw: str, finish_reason: str | None):
        super().__init__(message)
        self.raw = raw
        self.finish_reason = finish_reason


# ----------------------------------------------------------------------------------------------- counters
@dataclass
class StageCounters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    bad_responses: int = 0
    format_fallbacks: int = 0
    repairs: int = 0
    invalid_outputs: int = 0
    failures: int = 0


_RETRY_KIND_COUNTER = {
    "rate_limited": "rate_limited", "server_error": "server_errors", "timeout": "timeouts",
    "connection": "connection_errors", "bad_response": "bad_responses",
}


@dataclass
class Usage:
    """Per-unit usage (stored with each result record)."""

    tokens: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, stage: str, c: Completion) -> None:
        s = self.tokens.setdefault(stage, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        s["requests"] += 1
        s["prompt_tokens"] += c.prompt_tokens
        s["completion_tokens"] += c.completion_tokens


# ------------------------------------------------------------------------------------------------- client
class LlmClient:
    """Structured calls on top of a :class:`Backend`; all counters live here (one per run)."""

    def __init__(self, cfg: LlmSdgConfig, backend: Backend, prompts: PromptSet, seed: int = 13):
        self.cfg = cfg
        self.backend = backend
        self.prompts = prompts
        default_model = backend.model_label or cfg.model  # local backend: its model file
        self.settings = {s: StageSettings.resolve(s, getattr(cfg, s), default_model) for s in STAGES}
        self.counters = {s: StageCounters() for s in STAGES}
        self._sem = asyncio.Semaphore(cfg.max_concurrency)
        self._rng = random.Random(seed)
        self._not_before = 0.0  # monotonic time before which no request starts (after a 429 Retry-After)
        self._modes: dict[str, str] = {}  # model -> structured-output mode that works
        self.attempts = 0
        self.budget_exhausted = False
        self.in_flight = 0
        self.max_in_flight = 0
        self._in_flight_area = 0.0
        self._last_change = time.monotonic()
        self._started = time.monotonic()

    # ---------------------------------------------------------------- accounting
    def _track(self, delta: int) -> None:
        now = time.monotonic()
        self._in_flight_area += self.in_flight * (now - self._last_change)
        self._last_change = now
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def mean_in_flight(self) -> float:
        self._track(0)
        elapsed = self._last_change - self._started
        return self._in_flight_area / elapsed if elapsed > 0 else 0.0

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, c in self.counters.items():
            for k, v in vars(c).items():
                out[f"llm.{stage}.{k}"] = v
        out["llm.requests"] = sum(c.requests for c in self.counters.values())
        out["llm.prompt_tokens"] = sum(c.prompt_tokens for c in self.counters.values())
        out["llm.completion_tokens"] = sum(c.completion_tokens for c in self.counters.values())
        out["llm.max_in_flight"] = self.max_in_flight
        out["llm.mean_in_flight"] = round(self.mean_in_flight(), 3)
        out["llm.budget_exhausted"] = int(self.budget_exhausted)
        return out

    # ---------------------------------------------------------------- one request with retries
    def _backoff(self, attempt: int) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2 ** attempt))
        return cap / 2 + self._rng.uniform(0, cap / 2)  # "equal jitter": at least half the exponential step

    def _mode_for(self, model: str) -> str:
        if self.cfg.structured_output != "auto":
            return self.cfg.structured_output
        return self._modes.get(model, self.backend.modes[0])

    async def request(self, stage: str, messages: list[Message], schema_name: str,
                      schema: dict | None, usage: Usage | None = None) -> Completion:
        """Send one chat request (retrying transient errors); every HTTP attempt counts against the budget."""
        settings = self.settings[stage]
        counters = self.counters[stage]
        attempt = 0
        while True:
            mode = self._mode_for(settings.model)
            response_format = _response_format(mode, schema_name, schema)
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            async with self._sem:
                if self.cfg.request_budget and self.attempts >= self.cfg.request_budget:
                    self.budget_exhausted = True
                    raise BudgetExhausted(f"request budget of {self.cfg.request_budget} spent (sdg.llm.request_budget)")
                self.attempts += 1
                counters.requests += 1
                self._track(+1)
                err: Exception | None = None
                try:
                    completion = await self.backend.chat(messages, settings, response_format)
                except (Retryable, UnsupportedFormat) as exc:
                    err = exc
                except RequestFailed:
                    counters.failures += 1
                    raise
                finally:
                    self._track(-1)
                if err is None:
                    counters.prompt_tokens += completion.prompt_tokens
                    counters.completion_tokens += completion.completion_tokens
                    if usage is not None:
                        usage.add(stage, completion)
                    return completion
            if isinstance(err, UnsupportedFormat):
                if self.cfg.structured_output != "auto" or mode == "none":
                    counters.failures += 1
                    raise RequestFailed(f"{stage}: endpoint refused response_format ({err}); "
                                        f"set sdg.llm.structured_output=auto or none", kind="http_error")
                nxt = MODES[MODES.index(mode) + 1]
                if self._modes.get(settings.model, mode) == mode:
                    log.warning("%s: endpoint refused structured output mode %s (%s); falling back to %s",
                                settings.model, mode, err, nxt)
                    self._modes[settings.model] = nxt
                counters.format_fallbacks += 1
                continue
            assert isinstance(err, Retryable)
            setattr(counters, _RETRY_KIND_COUNTER[err.kind], getattr(counters, _RETRY_KIND_COUNTER[err.kind]) + 1)
            if attempt >= self.cfg.max_retries:
                counters.failures += 1
                raise RequestFailed(f"{stage}: gave up after {attempt + 1} attempts: {err}", kind=err.kind)
            delay = self._backoff(attempt)
            if err.retry_after is not None:
                delay = max(err.retry_after, 0.0) + self._rng.uniform(0, 0.1 * max(err.retry_after, 0.1))
                if err.kind == "rate_limited":
                    self._not_before = max(self._not_before, time.monotonic() + delay)
            attempt += 1
            counters.retries += 1
            log.info("%s request: %s; retry %d/%d in %.2fs", stage, err, attempt, self.cfg.max_retries, delay)
            await asyncio.sleep(delay)

    # ---------------------------------------------------------------- structured call
    async def structured(
        self,
        stage: str,
        messages: list[Message],
        model_cls: type[BaseModel],
        context: dict[str, Any] | None = None,
        usage: Usage | None = None,
    ) -> BaseModel:
        """Request, parse tolerantly, validate with ``context``; one repair request on failure, then
        :class:`StructuredOutputError`."""
        schema = json_schema(model_cls, context)
        name = f"embedforge_{stage}"
        completion = await self.request(stage, messages, name, schema, usage)
        parsed, problems = _parse(completion.text, model_cls, context)
        if parsed is not None:
            return parsed
        self.counters[stage].repairs += 1
        hint = " The reply was cut off by max_tokens." if completion.finish_reason == "length" else ""
        log.info("%s reply failed validation (%s); sending one repair request", stage, problems[:300])
        repair = self.prompts.repair_messages(messages, completion.text, problems + hint)
        completion = await self.request(stage, repair, name, schema, usage)
        parsed, problems2 = _parse(completion.text, model_cls, context)
        if parsed is not None:
            return parsed
        self.counters[stage].invalid_outputs += 1
        self.counters[stage].failures += 1
        cut = (f"; the reply was cut off at max_tokens={self.settings[stage].max_tokens} "
               f"(raise sdg.llm.{stage}.max_tokens)") if completion.finish_reason == "length" else ""
        raise StructuredOutputError(f"{stage}: reply invalid after one repair: {problems2[:500]}{cut}",
                                    raw=completion.text, finish_reason=completion.finish_reason)


def _response_format(mode: str, name: str, schema: dict | None) -> dict | None:
    if mode == "json_schema" and schema is not None:
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}
    if mode == "json_object" and schema is not None:
        return {"type": "json_object", "schema": schema}
    if mode in ("json_schema", "json_object", "json_object_plain"):
        return {"type": "json_object"}
    return None


def _parse(text: str, model_cls: type[BaseModel], context: dict | None) -> tuple[BaseModel | None, str]:
    try:
        obj = extract_json(text)
    except JsonNotFound as exc:
        return None, f"{exc}; reply with a single JSON object"
    try:
        return model_cls.model_validate(obj, context=context), ""
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(reply)'}: {e['msg']}" for e in exc.errors()[:12])
        return None, problems


def make_backend(cfg: LlmSdgConfig) -> Backend:
    """The configured backend; the API key is read here from the environment and kept only in the SDK client."""
    if cfg.backend == "local":
        return LocalBackend(cfg.local_model, gguf_file=cfg.local_gguf_file, device=cfg.local_device)
    key, source = resolve_api_key(cfg)
    if key is None:
        log.info("no API key in $%s%s; sending requests without one (fine for local servers)", cfg.api_key_env,
                 f" or ${cfg.fallback_api_key_env}" if cfg.fallback_api_key_env else "")
    else:
        log.info("API key taken from $%s", source)
    return OpenAIBackend(cfg.endpoint_url(), key)  # $sdg.llm.base_url_env when set (a URL with credentials)

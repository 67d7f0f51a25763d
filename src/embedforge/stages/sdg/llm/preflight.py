"""Pre-flight of the LLM generator: is the endpoint usable at all? Answered in seconds, before any document.

Without it a missing key or a stopped server shows only after every document was retried (about a minute on
14 documents) and as a count of failures. :func:`preflight` checks, in this order, and raises
:class:`~embedforge.errors.ConfigError` with one line naming the setting to fix:

1. a key: ``$<sdg.llm.api_key_env>`` (or ``$<sdg.llm.fallback_api_key_env>``) is set, or ``sdg.llm.base_url`` is
   not the remote default. **A keyless self-hosted endpoint (vLLM, llama.cpp, NIM without auth) is declared by
   its ``base_url``**: any URL other than the default build.nvidia.com one may be used without a key. With the
   default URL and no key, nothing is sent;
2. the endpoint answers ``GET <base_url>/models`` within :data:`TIMEOUT_S` — a total deadline per request, from
   sending it to the last byte of the reply, so a server that trickles its answer cannot hold the run (refused,
   unreachable, timeout and 401/403 are each named), with a JSON model list (``{"data": [{"id": ...}, ...]}``;
   a body that is not JSON, or a list whose entries have no string ``id``, is named too);
3. every model the run uses (``sdg.llm.model`` and the per-stage ``sdg.llm.<stage>.model``) is listed there; an
   endpoint without a model list (404/405, or an empty one) must answer one tiny chat request (1 token) per model
   instead.

Every message shows the endpoint redacted and passes what the server said through
:func:`~embedforge.redact.redact`, which also hides the API key itself should the server echo it back.
``embedforge run`` calls it before any stage starts, and the sdg stage again (on Kubernetes it runs alone).
``backend=local`` needs no endpoint and is not checked here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from embedforge.errors import ConfigError
from embedforge.redact import redact
from embedforge.stages.sdg.llm.aio import run_sync
from embedforge.stages.sdg.llm.openai_backend import (
    client_args,
    error_text,
    resolve_api_key,
)

if TYPE_CHECKING:
    from embedforge.config import LlmSdgConfig

#: Seconds the endpoint gets to answer each pre-flight request, in all (a model list is instant on a working server).
TIMEOUT_S = 10.0

T = TypeVar("T")


def remote_default_url() -> str:
    """The default ``sdg.llm.base_url`` (build.nvidia.com): the one endpoint never contacted without a key."""
    from embedforge.config import LlmSdgConfig

    return LlmSdgConfig.model_fields["base_url"].default


def models_in_use(cfg: LlmSdgConfig) -> dict[str, str]:
    """``{model: setting that names it}`` for every stage that sends requests."""
    used: dict[str, str] = {}
    stages = [("artifacts", cfg.artifacts), ("qa", cfg.qa)] + ([("judge", cfg.judge)] if cfg.judge_enabled else [])
    for name, st in stages:
        if st.model:
            used.setdefault(st.model, f"sdg.llm.{name}.model")
        else:
            used.setdefault(cfg.model, "sdg.llm.model")
    return used


def model_ids(body: bytes, url: str) -> list[str]:
    """The model ids of a ``GET /models`` reply body; one-line ConfigError when it is not a JSON model list."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        shown = redact(body[:80].decode("utf-8", "replace"))
        raise ConfigError(f"sdg.llm.base_url {url} answered GET /models with a body that is not JSON (it begins "
                          f"{' '.join(shown.split())!r}): point sdg.llm.base_url at the OpenAI-compatible API "
                          "root (it usually ends in /v1)") from None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise ConfigError(f"sdg.llm.base_url {url} answered GET /models with JSON that is not a model list (no "
                          '"data" list): point sdg.llm.base_url at the OpenAI-compatible API root (it usually '
                          "ends in /v1)")
    ids = []
    for i, item in enumerate(data):
        mid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(mid, str) or not mid:
            got = f'"id" {mid!r}' if isinstance(item, dict) else f"{type(item).__name__} {redact(repr(item))[:40]}"
            raise ConfigError(f"sdg.llm.base_url {url} answered GET /models with a malformed model list (entry "
                              f'{i} has {got}, not a model object with a string "id"): check the server behind '
                              "sdg.llm.base_url")
        ids.append(mid)
    return ids


async def _within(request: Awaitable[T]) -> T:
    """``request`` cancelled (its connection closed) when it has not finished within :data:`TIMEOUT_S` in all."""
    return await asyncio.wait_for(request, TIMEOUT_S)


def preflight(cfg: LlmSdgConfig) -> list[str]:
    """Check key, endpoint and models (see the module docstring); return the models the endpoint lists.

    Raises:
        ConfigError: one line naming the setting to fix (the key itself never appears in it).
    """
    if cfg.backend == "local":
        return []
    endpoint = cfg.endpoint_url()  # $sdg.llm.base_url_env when set: the client gets the real URL
    url = redact(endpoint)  # shown in messages (credentials in a URL never are)
    key, source = resolve_api_key(cfg)
    env_names = " or ".join(f"${n}" for n in (cfg.api_key_env, cfg.fallback_api_key_env) if n)
    if key is None and endpoint.rstrip("/") == remote_default_url().rstrip("/"):
        raise ConfigError(
            f"no API key for sdg.llm.base_url {url}: set {env_names} (sdg.llm.api_key_env), or point "
            "sdg.llm.base_url at a self-hosted endpoint that needs none")
    return run_sync(_check(cfg, endpoint, url, key, source, env_names))


async def _check(cfg: LlmSdgConfig, endpoint: str, url: str, key: str | None, source: str | None,
                 env_names: str) -> list[str]:
    import openai  # after the checks that need no request: a missing key fails before the SDK loads

    client = openai.AsyncOpenAI(api_key=key or "no-key", max_retries=0, timeout=TIMEOUT_S, **client_args(endpoint))
    used = models_in_use(cfg)
    try:
        try:
            raw = await _within(client.models.with_raw_response.list())
            listed = model_ids(raw.http_response.content, url)
        except openai.APIStatusError as exc:
            if exc.status_code not in (404, 405):  # 404/405: the endpoint has no model list
                raise
            listed = []
        if listed:
            for model, setting in used.items():
                if model not in listed:
                    shown = ", ".join(listed[:8]) + (" ..." if len(listed) > 8 else "")
                    raise ConfigError(f"{setting} {model!r} is not served by sdg.llm.base_url {url} (it serves: "
                                      f"{redact(shown)}): fix {setting}")
        else:  # no model list: one tiny request per model
            for model, setting in used.items():
                try:
                    await _within(client.chat.completions.with_raw_response.create(
                        model=model, max_tokens=1, messages=[{"role": "user", "content": "Say OK."}]))
                except (openai.NotFoundError, openai.BadRequestError) as exc:
                    raise ConfigError(f"{setting} {model!r} was refused by sdg.llm.base_url {url} "
                                      f"({exc.status_code}: {error_text(exc)}): fix {setting}") from None
        return listed
    except (asyncio.TimeoutError, openai.APITimeoutError):
        raise ConfigError(f"sdg.llm.base_url {url} did not answer within {TIMEOUT_S:g} s: check that the server "
                          "is up and sdg.llm.base_url is right") from None
    except openai.APIConnectionError as exc:
        if _refused(exc):
            raise ConfigError(f"sdg.llm.base_url {url} refused the connection: start the server or fix "
                              "sdg.llm.base_url") from None
        raise ConfigError(f"sdg.llm.base_url {url} cannot be reached ({redact(_root_cause(exc))}): check the URL "
                          "and the network") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        how = f"refused the key in ${source}: fix it" if key else f"needs a key: set {env_names}"
        raise ConfigError(f"sdg.llm.base_url {url} {how} (sdg.llm.api_key_env names the variable; "
                          f"{exc.status_code}: {error_text(exc)})") from None
    except openai.APIStatusError as exc:
        raise ConfigError(f"sdg.llm.base_url {url} answered {exc.status_code} to a model list request "
                          f"({error_text(exc)}): check sdg.llm.base_url") from None
    finally:
        await client.close()


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _refused(exc: BaseException) -> bool:
    return any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower() for e in _chain(exc))


def _root_cause(exc: BaseException) -> str:
    """The innermost error's text ("[Errno -2] Name or service not known" ...), on one line."""
    text = next((str(e) for e in reversed(_chain(exc)) if str(e)), str(exc))
    return " ".join(text.split())

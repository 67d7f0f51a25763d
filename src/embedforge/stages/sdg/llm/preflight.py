"""Pre-flight of the LLM generator: is the endpoint usable at all? Answered in seconds, before any document.

Without it a missing key or a stopped server shows only after every document was retried (about a minute on
14 documents) and as a count of failures. :func:`preflight` checks, in this order, and raises
:class:`~embedforge.errors.ConfigError` with one line naming the setting to fix:

1. a key: ``$<sdg.llm.api_key_env>`` (or ``$<sdg.llm.fallback_api_key_env>``) is set, or ``sdg.llm.base_url`` is
   not the remote default. **A keyless self-hosted endpoint (vLLM, llama.cpp, NIM without auth) is declared by
   its ``base_url``**: any URL other than the default build.nvidia.com one may be used without a key. With the
   default URL and no key, nothing is sent;
2. the endpoint answers ``GET <base_url>/models`` within :data:`TIMEOUT_S` (refused, unreachable, timeout and
   401/403 are each named);
3. every model the run uses (``sdg.llm.model`` and the per-stage ``sdg.llm.<stage>.model``) is listed there; an
   endpoint without a model list (404/405) must answer one tiny chat request (1 token) per model instead.

``embedforge run`` calls it before any stage starts, and the sdg stage again (on Kubernetes it runs alone).
``backend=local`` needs no endpoint and is not checked here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedforge.errors import ConfigError
from embedforge.redact import redact
from embedforge.stages.sdg.llm.openai_backend import _error_text, resolve_api_key

if TYPE_CHECKING:
    from embedforge.config import LlmSdgConfig

#: Seconds the endpoint gets to answer each pre-flight request (a model list is instant on a working server).
TIMEOUT_S = 10.0


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


def preflight(cfg: LlmSdgConfig) -> list[str]:
    """Check key, endpoint and models (see the module docstring); return the models the endpoint lists.

    Raises:
        ConfigError: one line naming the setting to fix (the key itself never appears in it).
    """
    if cfg.backend == "local":
        return []
    url = redact(cfg.base_url)  # shown in messages (credentials in a URL never are); the client gets the real one
    if not cfg.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"sdg.llm.base_url {url!r} must start with http:// or https://")
    key, source = resolve_api_key(cfg)
    env_names = " or ".join(f"${n}" for n in (cfg.api_key_env, cfg.fallback_api_key_env) if n)
    if key is None and cfg.base_url.rstrip("/") == remote_default_url().rstrip("/"):
        raise ConfigError(
            f"no API key for sdg.llm.base_url {url}: set {env_names} (sdg.llm.api_key_env), or point "
            "sdg.llm.base_url at a self-hosted endpoint that needs none")
    import openai  # after the checks that need no request: a missing key fails before the SDK loads

    client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "no-key", max_retries=0, timeout=TIMEOUT_S)
    used = models_in_use(cfg)
    try:
        try:
            listed = [m.id for m in client.models.list()]
        except openai.APIStatusError as exc:
            if exc.status_code not in (404, 405):  # 404/405: the endpoint has no model list
                raise
            listed = []
        if listed:
            for model, setting in used.items():
                if model not in listed:
                    shown = ", ".join(listed[:8]) + (" ..." if len(listed) > 8 else "")
                    raise ConfigError(f"{setting} {model!r} is not served by sdg.llm.base_url {url} (it serves: "
                                      f"{shown}): fix {setting}")
        else:  # no model list: one tiny request per model
            for model, setting in used.items():
                try:
                    client.chat.completions.create(model=model, max_tokens=1,
                                                   messages=[{"role": "user", "content": "Say OK."}])
                except (openai.NotFoundError, openai.BadRequestError) as exc:
                    raise ConfigError(f"{setting} {model!r} was refused by sdg.llm.base_url {url} "
                                      f"({exc.status_code}: {_error_text(exc)}): fix {setting}") from None
        return listed
    except openai.APITimeoutError:
        raise ConfigError(f"sdg.llm.base_url {url} did not answer within {TIMEOUT_S:g} s: check that the server "
                          "is up and sdg.llm.base_url is right") from None
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc  # httpx's ConnectError: "[Errno 111] Connection refused", DNS failures ...
        if "refused" in str(cause).lower():
            raise ConfigError(f"sdg.llm.base_url {url} refused the connection: start the server or fix "
                              "sdg.llm.base_url") from None
        raise ConfigError(f"sdg.llm.base_url {url} cannot be reached ({redact(str(cause))}): check the URL and the "
                          "network") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        how = f"refused the key in ${source}: fix it" if key else f"needs a key: set {env_names}"
        raise ConfigError(f"sdg.llm.base_url {url} {how} (sdg.llm.api_key_env names the variable; "
                          f"{exc.status_code}: {_error_text(exc)})") from None
    except openai.APIStatusError as exc:
        raise ConfigError(f"sdg.llm.base_url {url} answered {exc.status_code} to a model list request "
                          f"({_error_text(exc)}): check sdg.llm.base_url") from None
    finally:
        client.close()

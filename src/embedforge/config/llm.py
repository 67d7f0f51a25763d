"""Settings of the LLM synthetic-data generator (``sdg.llm.*``), per stage of NVIDIA's SDG recipe.

Credentials never need to be in these settings: the API key comes from the environment variable named by
``api_key_env``, and an endpoint URL that must carry credentials itself (``https://user:pw@host/v1``,
``?api_key=...``) can come from the variable named by ``base_url_env`` (:meth:`LlmSdgConfig.endpoint_url`), so
that ``base_url`` — what manifests, logs and the stage processes' command lines show — holds only its redacted
form (:meth:`LlmSdgConfig.hide_url_credentials`).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from embedforge.config.base import StageConfig, http_url
from embedforge.config.encode import EncodeConfig
from embedforge.errors import ConfigError
from embedforge.redact import redact

#: The variable ``embedforge run`` hands the stage processes a ``base_url`` with credentials in (see
#: :meth:`LlmSdgConfig.hide_url_credentials`): the environment is inherited, the command line is world-readable.
BASE_URL_ENV = "EMBEDFORGE_SDG_LLM_BASE_URL"
_ENV_NAME = r"^([A-Za-z_][A-Za-z0-9_]*)?$"


class LlmStageSettings(StageConfig):
    """Sampling and transport settings of one LLM SDG stage (artifacts, qa, judge)."""

    model: str = Field("", description="Model of this stage; empty = sdg.llm.model.")
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature of this stage's "
                               "requests; 0 = (near-)greedy, the most repeatable replies (the local backend then "
                               "decodes greedily).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling: tokens are drawn from the smallest "
                         "set whose probabilities sum to this; 1 = no cut-off. The local backend ignores it at "
                         "temperature 0.")
    max_tokens: int = Field(1024, ge=16, le=131072, description="Completion token cap; a reply cut by it fails validation.")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Longest a request may take in seconds, from "
                             "sending it to the last byte of the reply (a total deadline: a server that trickles "
                             "its reply cannot hold a request longer); retried like a 5xx.")


LlmQueryType = Literal["multi_hop", "structural", "contextual", "factual"]


class LlmSdgConfig(StageConfig):
    """LLM synthetic-data generation (NVIDIA SDG recipe): artifacts -> QA -> semantic dedup -> LLM judge.

    The API key is never part of the config: only the NAME of the environment variable holding it.
    """

    backend: Literal["openai", "local"] = Field("openai", description="openai: any OpenAI-compatible endpoint; local: transformers in-process.")
    base_url: str = Field("https://integrate.api.nvidia.com/v1", description="OpenAI-compatible "
                          "endpoint (build.nvidia.com, NIM, vLLM, llama.cpp ...), http:// or https://. Put no "
                          "credentials here (they would be shown redacted but still travel in the config): the key "
                          "belongs in api_key_env, a URL that must carry them in base_url_env.")
    base_url_env: str = Field("", pattern=_ENV_NAME, description="Env var holding the endpoint URL, for a URL that "
                              "carries credentials (https://user:password@host/v1, ?api_key=...): requests go to "
                              "its value, and base_url is only shown. embedforge run moves credentials out of "
                              "base_url into $EMBEDFORGE_SDG_LLM_BASE_URL this way before any stage starts.")
    model: str = Field("meta/llama-3.3-70b-instruct", min_length=1, description="Default model of every stage.")
    api_key_env: str = Field("NVIDIA_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Env var holding the API key.")
    fallback_api_key_env: str = Field("OPENAI_API_KEY", pattern=_ENV_NAME, description="Env var tried when api_key_env is unset.")
    artifacts: LlmStageSettings = Field(default_factory=lambda: LlmStageSettings(temperature=0.2, max_tokens=1536))
    qa: LlmStageSettings = Field(default_factory=lambda: LlmStageSettings(temperature=0.6, max_tokens=4096))
    judge: LlmStageSettings = Field(default_factory=lambda: LlmStageSettings(temperature=0.0, max_tokens=512))
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="auto: JSON schema, falling back to json_object, then prompt-only when the endpoint refuses.")
    prompt_version: str = Field("v1", description="Version of the prompt templates (embedforge.stages.sdg.llm.prompts).")
    max_artifacts_per_type: int = Field(2, ge=1, le=20, description="Items kept per artifact type.")
    num_pairs: int = Field(7, ge=1, le=50, description="QA pairs asked for per document/bundle.")
    query_type_counts: dict[LlmQueryType, int] = Field(
        default_factory=lambda: {"multi_hop": 3, "structural": 2, "contextual": 2},
        description="Pairs per query type; must sum to num_pairs.")
    reasoning_types: list[str] = Field(
        default_factory=lambda: ["factual", "relational", "inferential", "temporal", "procedural", "causal"],
        min_length=1, description="Reasoning types the QA prompt offers; every pair must be labelled with one of "
        "them (compared lower-cased, spaces and hyphens as underscores), else the reply fails validation.")
    min_complexity: int = Field(2, ge=1, le=5, description="Pairs the model rates below this complexity are dropped.")
    max_hops: int = Field(3, ge=1, le=3, description="Most reasoning hops (hop_contexts) a question may chain: the "
                          "prompt asks for 1 to this many and a reply's further hops are dropped.")
    max_segments: int = Field(12, ge=1, le=200, description="Chunks per prompt; longer documents are split into windows.")
    bundle_size: int = Field(1, ge=1, le=3, description="Documents per prompt: 1 = per document, 2-3 = cross-document bundles.")
    bundle_strategy: Literal["similar", "random"] = Field("similar", description="similar: bundle nearest documents (dedup model); random: seeded shuffle.")
    dedup_threshold: float = Field(0.9, gt=0.0, le=1.0, description="Drop a question with cosine above this to an earlier one.")
    dedup_model: str = Field("all-MiniLM-L6-v2", description="Embedding model of dedup/bundling (the pipeline passes the base model).")
    encode: EncodeConfig = Field(default_factory=EncodeConfig, description="How the dedup model embeds the "
                                 "chunks (bundling) and the generated questions (de-duplication); `embedforge run` "
                                 "shares mine's and evaluate's graph cache.")
    judge_enabled: bool = Field(True, description="Score pairs with the LLM judge.")
    judge_threshold: float = Field(7.0, ge=0.0, le=10.0, description="Pairs whose overall judge score is below this are dropped.")
    max_concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at once.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a 429/5xx/timeout/connection error per request.")
    backoff_base_s: float = Field(1.0, gt=0, le=600, description="Exponential backoff between retries, in seconds: retry n "
                                  "(from 0) waits between half and all of min(backoff_max_s, backoff_base_s x 2^n), "
                                  "at random; a server's Retry-After replaces it.")
    backoff_max_s: float = Field(60.0, gt=0, le=3600, description="Cap in seconds of the exponential backoff step (the wait "
                                 "is half to all of it); a server's Retry-After is not capped.")
    request_budget: int = Field(0, ge=0, le=1_000_000_000, description="Max HTTP requests per run (retries included); 0 = unlimited.")
    max_units: int = Field(0, ge=0, le=1_000_000_000, description="Process at most this many documents/bundles per split; 0 = all (for trials).")
    max_failed_fraction: float = Field(0.5, ge=0.0, le=1.0, description="Fail the stage when more documents than this fraction failed.")
    max_consecutive_failures: int = Field(
        8, ge=0, le=100_000, description="Stop the stage once this many documents/bundles in a row failed because "
        "the endpoint gave no reply (errors and timeouts after every retry; a reply that fails validation does "
        "not count), naming the endpoint and the last error, instead of trying every document against a dead "
        "endpoint. Finished documents are kept. 0 = never stop early.")
    work_dir: str = Field("", description="Folder of resumable results; empty = under the system temp, keyed by corpus+config.")
    resume: Literal["always", "if_possible", "never"] = Field(
        "if_possible", description="always: resume or fail if saved state is incompatible; if_possible: resume when compatible; never: start over.")
    local_model: str = Field("", description="backend=local: model folder, hub id or a .gguf file path.")
    local_gguf_file: str = Field("", description="backend=local: GGUF file name inside local_model (transformers gguf_file=).")
    local_device: str = Field("auto", description="backend=local: auto | cpu | cuda | cuda:N")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

    @field_validator("query_type_counts", mode="before")
    @classmethod
    def _counts_from_text(cls, v: Any) -> Any:
        # "--set sdg.llm.query_type_counts=multi_hop:1,structural:1" (or a YAML/JSON mapping) from the CLI
        if isinstance(v, str):
            loaded = yaml.safe_load(v) if v.strip().startswith("{") else None
            if isinstance(loaded, dict):
                return loaded
            try:
                return {k.strip(): int(n) for k, n in (item.split(":") for item in v.split(",") if item.strip())}
            except ValueError:
                raise ValueError("write query_type_counts as 'multi_hop:3,structural:2,contextual:2'") from None
        return v

    def endpoint_url(self) -> str:
        """The URL requests go to: ``$<base_url_env>`` when that is set, else ``base_url``.

        Raises:
            ConfigError: base_url_env names a variable that is not set.
        """
        if not self.base_url_env:
            return self.base_url
        url = os.environ.get(self.base_url_env, "")
        if not url:
            raise ConfigError(f"sdg.llm.base_url_env names ${self.base_url_env}, which is not set: export the "
                              "endpoint URL in it, or clear sdg.llm.base_url_env to use sdg.llm.base_url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"${self.base_url_env} (sdg.llm.base_url_env) must hold an http:// or https:// URL, "
                              f"not {redact(url)!r}")
        return url

    def hide_url_credentials(self, env_name: str = BASE_URL_ENV) -> dict[str, str]:
        """Move credentials out of ``base_url``: when it carries any (what :func:`~embedforge.redact.redact`
        hides), ``base_url`` becomes its redacted form, ``base_url_env`` names ``env_name``, and the real URL is
        returned as ``{env_name: url}`` for the caller to put in the environment of the processes that send the
        requests. Returns ``{}`` (and changes nothing) for a URL without credentials or one already moved."""
        if self.base_url_env or redact(self.base_url) == self.base_url:
            return {}
        url = self.base_url
        self.base_url = redact(url)
        self.base_url_env = env_name
        return {env_name: url}

    @model_validator(mode="after")
    def _counts_sum(self) -> "LlmSdgConfig":
        total = sum(self.query_type_counts.values())
        if any(v < 0 for v in self.query_type_counts.values()) or total != self.num_pairs:
            raise ValueError(
                f"sdg.llm.query_type_counts {dict(self.query_type_counts)} must be >= 0 and sum to sdg.llm.num_pairs={self.num_pairs}")
        if self.backend == "local" and not self.local_model:
            raise ValueError("sdg.llm.backend=local needs sdg.llm.local_model (a model folder, hub id or .gguf file)")
        return self



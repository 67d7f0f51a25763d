"""An OpenAI-compatible embeddings API in front of the Triton ensemble: what RAG frameworks and NVIDIA NIM clients
call (``openai.OpenAI(base_url=...).embeddings.create``, LangChain's ``OpenAIEmbeddings`` / ``NVIDIAEmbeddings``).

Routes (a Starlette ASGI app, served by uvicorn: :func:`serve`):

* ``POST /v1/embeddings``: OpenAI's request and response (:mod:`embedforge.serving.openai_schema` lists every
  field, NIM's ``input_type`` and ``truncate`` included), answered by the ensemble ``<model>`` (``text`` +
  ``input_type`` -> ``embeddings``), so the vectors equal :func:`embedforge.serving.client.embed`'s.
* ``GET /v1/models``, ``GET /v1/models/{id}``: the served name and its aliases, in OpenAI's list shape.
* ``GET /v1/health/live`` (the process answers) and ``GET /v1/health/ready`` (Triton serves the ensemble): NIM's
  probe paths.

Throughput: concurrent requests are coalesced into Triton requests of up to the ensemble's ``max_batch_size``
rows by a :class:`~embedforge.serving.microbatch.MicroBatcher` over one ``tritonclient.http.aio`` connection pool;
a request with more rows than that is split. Inference needs no admin key.

Which version: Triton serves exactly the champion (:mod:`embedforge.serving.repository`). The API reads the
ensemble's metadata (its version and the embedding width) at start and every ``refresh_s`` in the background, and
counts ``usage`` tokens with that version's tokenizer folder in the model repository (``repository``) or with a
fixed ``tokenizer`` folder (:mod:`embedforge.serving.token_count`); with neither, the counts are estimates. After
a promotion or rollback the counts follow within ``refresh_s``; the vectors always come from what Triton serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embedforge.errors import ConfigError, InputError
from embedforge.redact import redact
from embedforge.serving.client import DEFAULT_MODEL, parse_url, text_inputs
from embedforge.serving.microbatch import MicroBatcher
from embedforge.serving.openai_schema import (
    MAX_INPUTS,
    ApiError,
    bad_request,
    embedding_list,
    model_list,
    parse_request,
    shorten,
)
from embedforge.serving.token_count import (
    ApproximateCounter,
    TokenCounter,
    tokenizer_folder,
)

log = logging.getLogger(__name__)

#: The ensemble's output (:mod:`embedforge.serving.repository`).
OUTPUT = "embeddings"
#: Response header naming the Triton model version that answered.
VERSION_HEADER = "x-embedforge-model-version"
#: Used when neither the ``max_batch`` setting, Triton's model-config API nor the repository gives the ensemble's
#: ``max_batch_size`` (the default of ``triton.max_batch_size``).
FALLBACK_MAX_BATCH = 64
#: Requests whose texts are longer than this (characters, in all) are tokenised (usage, batching) in a worker thread,
#: shorter ones inline on the event loop (a thread hop costs more than tokenising a few sentences).
_INLINE_COUNT_CHARS = 4096
#: What a lost connection to Triton raises (aiohttp's disconnects are not all OSErrors).
_NETWORK_ERRORS = (OSError, asyncio.TimeoutError, aiohttp.ClientError)


@dataclass(frozen=True)
class ApiSettings:
    """How the API reaches Triton and what it accepts.

    Args:
        triton_url: Triton's HTTP endpoint, ``http(s)://host:port``.
        model: The ensemble's name (``triton.model_name``); clients send it (or an alias) as ``model``.
        aliases: More names clients may send as ``model`` (e.g. the registered model name).
        repository: The live model repository (read-only is enough): the served version's tokenizer folder there
            counts ``usage`` tokens exactly, and its ``config.pbtxt`` gives ``max_batch_size`` where Triton's
            model-config API is restricted.
        tokenizer: A tokenizer folder (``tokenizer.json`` + prompts + ``max_seq_length``) to count with instead.
        max_batch: Rows per Triton request; None = the ensemble's ``max_batch_size``.
        max_inputs: Most inputs per HTTP request (OpenAI: 2048); more is a 413.
        max_inflight: Triton requests in flight at once; further rows wait and are coalesced.
        window_ms: Hold a batch that is not full this long for more rows (0: send at once when a slot is free).
        max_padding: Padding a coalesced batch may add, as a fraction of its real tokens (None: any; padding is
            nearly free on a GPU, as costly as real tokens on a CPU).
        timeout_s: Timeout of one Triton request.
        refresh_s: How often the served version and width are re-read from Triton.
        max_request_bytes: Largest request body; more is a 413.
    """

    triton_url: str
    model: str = DEFAULT_MODEL
    aliases: tuple[str, ...] = ()
    repository: str | None = None
    tokenizer: str | None = None
    max_batch: int | None = None
    max_inputs: int = MAX_INPUTS
    max_inflight: int = 32
    window_ms: float = 0.0
    max_padding: float | None = 0.25
    timeout_s: float = 60.0
    refresh_s: float = 10.0
    max_request_bytes: int = 32 * 1024 * 1024

    def __post_init__(self):
        parse_url(self.triton_url)
        bounds = [("model", bool(self.model), "a Triton model name"),
                  ("max_batch", self.max_batch is None or self.max_batch >= 1, ">= 1"),
                  ("max_inputs", self.max_inputs >= 1, ">= 1"),
                  ("max_inflight", self.max_inflight >= 1, ">= 1"),
                  ("window_ms", self.window_ms >= 0, ">= 0"),
                  ("max_padding", self.max_padding is None or self.max_padding >= 0, ">= 0 (or None: no limit)"),
                  ("timeout_s", self.timeout_s > 0, "> 0"),
                  ("refresh_s", self.refresh_s > 0, "> 0"),
                  ("max_request_bytes", self.max_request_bytes >= 1, ">= 1")]
        for name, ok, rule in bounds:
            if not ok:
                raise ConfigError(f"embeddings API: {name} {getattr(self, name)!r}: must be {rule}")

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The names clients may send as ``model``: the ensemble's first, then the aliases."""
        return tuple(dict.fromkeys((self.model, *self.aliases)))


@dataclass(frozen=True)
class Served:
    """What Triton serves under the ensemble's name, as last read."""

    version: str
    dim: int
    max_batch: int
    trained_dims: tuple[int, ...] = ()
    checked_at: float = field(default_factory=time.monotonic)


def _unavailable(message: str, code: str = "triton_unavailable") -> ApiError:
    """A 503 in OpenAI's shape: clients (the ``openai`` one included) retry a 5xx, and a Triton outage, a rollout's
    swap or a timeout is worth retrying. Credentials in the Triton URL never reach the client."""
    return ApiError(503, redact(message), code=code, type="server_error")


class EmbeddingService:
    """The Triton side of the API: one ``tritonclient.http.aio`` client, the batcher, the served version's
    metadata and token counter. Create and use it inside one event loop (:meth:`start` ... :meth:`close`)."""

    def __init__(self, settings: ApiSettings):
        self.settings = settings
        self.netloc, self.ssl = parse_url(settings.triton_url)
        if settings.repository and not Path(settings.repository).is_dir():
            raise InputError(f"model repository {settings.repository} is not a folder: give the folder Triton serves "
                             "from (or no repository: usage token counts are then estimates)")
        self.client = None
        self.batcher: MicroBatcher[tuple[str, str]] = MicroBatcher(
            self._infer, max_batch=settings.max_batch or FALLBACK_MAX_BATCH, max_inflight=settings.max_inflight,
            window_s=settings.window_ms / 1000.0, max_padding=settings.max_padding)
        self.served_now: Served | None = None
        self.counter: TokenCounter | ApproximateCounter = ApproximateCounter()
        self._counter_version: str | None = None
        self._refreshing: asyncio.Task | None = None
        self._fixed_counter = TokenCounter(settings.tokenizer) if settings.tokenizer else None
        self.started = time.time()

    async def start(self) -> None:
        from tritonclient.http.aio import InferenceServerClient

        self.client = InferenceServerClient(self.netloc, ssl=self.ssl, conn_timeout=self.settings.timeout_s,
                                            conn_limit=max(8, 2 * self.settings.max_inflight))
        try:
            await self.refresh()
        except ApiError as exc:
            log.warning("embeddings API: %s (will retry on the first request)", exc.message)

    async def close(self) -> None:
        await self.batcher.close()
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self.client is not None:
            await self.client.close()

    @contextlib.contextmanager
    def _triton_errors(self, code: str):
        """Turn a failed call to Triton into a 503 :class:`ApiError` whose message names the server and why:
        ``code`` when Triton answered with an error, ``triton_timeout`` or ``triton_unavailable`` when it did not
        answer in time or at all."""
        from tritonclient.utils import InferenceServerException

        url = self.settings.triton_url
        try:
            yield
        except InferenceServerException as exc:
            raise _unavailable(f"Triton at {url}, model {self.settings.model!r}: {exc.message() or exc}", code
                               ) from None
        except asyncio.TimeoutError:
            raise _unavailable(f"Triton at {url} did not answer within {self.settings.timeout_s:g} s",
                               "triton_timeout") from None
        except _NETWORK_ERRORS as exc:
            raise _unavailable(f"cannot reach Triton at {url}: {str(exc) or type(exc).__name__}") from None

    # ------------------------------------------------------------------ what is served
    async def _served_config(self) -> tuple[int, tuple[int, ...]]:
        """The ensemble's ``max_batch_size`` (the ``max_batch`` setting first) and the Matryoshka dimensions its
        config names (:data:`~embedforge.serving.repository.DIMS_PARAMETER`; () for a model trained without),
        from Triton's model-config API or, where that is restricted, the repository's config."""
        from tritonclient.utils import InferenceServerException

        from embedforge.serving.repository import (
            CONFIG_FILE,
            DIMS_PARAMETER,
            validate_config,
        )

        max_batch, dims = None, ""
        try:  # restricted on the cluster (model-config needs the admin key): then the repository's config
            config = await self.client.get_model_config(self.settings.model)
            max_batch = int(config.get("max_batch_size") or 1)
            dims = ((config.get("parameters") or {}).get(DIMS_PARAMETER) or {}).get("string_value", "")
        except (InferenceServerException, *_NETWORK_ERRORS):
            if self.settings.repository:
                path = Path(self.settings.repository) / self.settings.model / CONFIG_FILE
                with contextlib.suppress(OSError, ConfigError):
                    conf = validate_config(path.read_text(encoding="utf-8"))
                    max_batch = max(1, conf.max_batch_size)
                    dims = conf.parameters[DIMS_PARAMETER].string_value if DIMS_PARAMETER in conf.parameters else ""
        trained = tuple(int(d) for d in dims.split(",") if d.strip().isdigit())
        return self.settings.max_batch or max_batch or FALLBACK_MAX_BATCH, trained

    def _load_counter(self, version: str) -> TokenCounter | ApproximateCounter:
        if self._fixed_counter is not None:
            return self._fixed_counter
        if self.settings.repository:
            folder = tokenizer_folder(self.settings.repository, self.settings.model, version)
            try:
                return TokenCounter(folder)
            except InputError as exc:
                log.warning("embeddings API: usage token counts are estimates: %s", exc)
        return ApproximateCounter()

    async def refresh(self) -> Served:
        """Read the ensemble's served version and width from Triton (and its tokenizer when the version changed).

        Raises:
            ApiError: 503 when Triton cannot be reached or does not serve the ensemble.
        """
        name = self.settings.model
        with self._triton_errors("model_not_served"):
            meta = await self.client.get_model_metadata(name)
        versions = sorted(meta.get("versions") or [], key=lambda v: int(v) if str(v).isdigit() else -1)
        output = next((o for o in meta.get("outputs", []) if o.get("name") == OUTPUT), None)
        if not versions or output is None or not output.get("shape"):
            raise _unavailable(f"Triton's model {name!r} has no version or no {OUTPUT!r} output: {meta}",
                               "model_not_served")
        version = str(versions[-1])
        old = self.served_now
        max_batch, dims = ((old.max_batch, old.trained_dims) if old is not None and old.version == version
                           else await self._served_config())
        if version != self._counter_version:
            self.counter = await asyncio.to_thread(self._load_counter, version)
            self._counter_version = version
            log.info("embeddings API: %s version %s (dim %s, max batch %d), usage tokens %s", name, version,
                     output["shape"][-1], max_batch, "exact" if self.counter.exact else "estimated")
        self.batcher.max_batch = max_batch
        self.served_now = Served(version=version, dim=int(output["shape"][-1]), max_batch=max_batch,
                                 trained_dims=dims)
        return self.served_now

    async def served(self) -> Served:
        """The last read :class:`Served`; re-read in the background when older than ``refresh_s``."""
        now = self.served_now
        if now is None:
            return await self.refresh()
        stale = time.monotonic() - now.checked_at > self.settings.refresh_s
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_quietly())
        return now

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except ApiError as exc:
            log.warning("embeddings API: %s", exc.message)

    async def ready(self) -> tuple[bool, str]:
        """Whether Triton serves the ensemble now (and why not)."""
        try:
            served = await self.refresh()
            with self._triton_errors("model_not_ready"):
                if not await self.client.is_model_ready(self.settings.model):
                    return False, f"Triton does not report {self.settings.model!r} ready"
        except ApiError as exc:
            return False, exc.message
        return True, f"{self.settings.model} version {served.version} is ready"

    # ------------------------------------------------------------------ inference
    async def _infer(self, rows: list[tuple[str, str]]) -> np.ndarray:
        """One Triton request for ``rows`` (``(text, input_type)``): their embeddings."""
        from tritonclient.http import InferRequestedOutput

        # an error from Triton is a 503 too: e.g. for about a second of a rollout the ensemble points at a step
        # being swapped, and a retry succeeds
        with self._triton_errors("triton_error"):
            result = await self.client.infer(self.settings.model, text_inputs([t for t, _ in rows],
                                                                              [k for _, k in rows]),
                                             outputs=[InferRequestedOutput(OUTPUT, binary_data=True)])
        out = result.as_numpy(OUTPUT)
        if out is None or out.ndim != 2 or out.shape[0] != len(rows):
            raise _unavailable(f"Triton returned {OUTPUT!r} of shape {getattr(out, 'shape', None)} for "
                               f"{len(rows)} texts", "triton_error")
        return out

    async def lengths(self, texts: list[str], input_type: str) -> list[int]:
        """Each text's length in the served model's tokens (:mod:`embedforge.serving.token_count`)."""
        counter = self.counter
        if sum(map(len, texts)) <= _INLINE_COUNT_CHARS:
            return counter.lengths(texts, input_type)
        return await asyncio.to_thread(counter.lengths, texts, input_type)


# ---------------------------------------------------------------------------------------------------- the app
async def _json_body(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is larger than {limit} bytes: send fewer or shorter inputs",
                         None, "request_too_large")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:  # nobody reads the answer; it only keeps the disconnect out of the error log
        raise bad_request("the client closed the connection before its body arrived", None,
                          "client_disconnected") from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise bad_request("the request body is not valid JSON", None, "invalid_json") from None


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def create_app(settings: ApiSettings) -> Starlette:
    """The ASGI app; ``app.state.service`` is its :class:`EmbeddingService` (batcher statistics, served version)."""
    service = EmbeddingService(settings)
    ids = list(settings.model_ids)

    def unknown_model(name: str) -> ApiError:
        return ApiError(404, f"The model '{name}' does not exist: this server serves {', '.join(ids)}", "model",
                        "model_not_found")

    async def embeddings(request: Request) -> JSONResponse:
        req = parse_request(await _json_body(request, settings.max_request_bytes), settings.max_inputs)
        if req.model not in ids:
            raise unknown_model(req.model)
        served = await service.served()
        if req.dimensions is not None and req.dimensions > served.dim:
            raise bad_request(f"'dimensions' {req.dimensions} is more than the model's {served.dim}", "dimensions")
        lengths = await service.lengths(req.texts, req.input_type)
        vectors = await service.batcher.submit([(t, req.input_type) for t in req.texts], lengths)
        body = embedding_list(shorten(vectors, req.dimensions), req.model, req.encoding_format, sum(lengths))
        return JSONResponse(body, headers={VERSION_HEADER: served.version})

    def listed(names: list[str]) -> dict:
        served = service.served_now  # as last read: listing models does not wait for Triton
        return model_list(names, int(service.started), dimensions=served.dim if served else None,
                          trained_dims=served.trained_dims if served else ())

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(listed(ids))

    async def model(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name not in ids:
            raise unknown_model(name)
        return JSONResponse(listed([name])["data"][0])

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"object": "health.response", "message": "Service is live."})

    async def ready(request: Request) -> JSONResponse:
        ok, message = await service.ready()
        return JSONResponse({"object": "health.response", "message": message}, status_code=200 if ok else 503)

    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None, code))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("embeddings API: %s %s failed", request.method, request.url.path)
        return _error(ApiError(500, redact(f"internal error: {type(exc).__name__}: {exc}"), None, "internal_error",
                               "server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{name:path}", model, methods=["GET"]),
            Route("/v1/health/live", live, methods=["GET"]),
            Route("/v1/health/ready", ready, methods=["GET"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def serve(settings: ApiSettings, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "info",
          access_log: bool = False) -> None:
    """Run the API with uvicorn until interrupted (SIGINT/SIGTERM end it gracefully: requests in flight finish).

    Args:
        settings: Where Triton is and what the API accepts.
        host, port: Where to listen (``0.0.0.0`` in a container).
        log_level: uvicorn's log level.
        access_log: Log every request (off by default: a line per request costs throughput).

    Raises:
        InputError: ``settings.repository`` is not a folder, or ``settings.tokenizer`` has no readable
            ``tokenizer.json``.
    """
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=access_log,
                server_header=False)

"""Call the served embedder with text: ``embed(url, texts, input_type="query")`` -> L2-normalised embeddings.

The server side is the ensemble :mod:`embedforge.serving.repository` publishes (``text`` BYTES ``[batch, 1]``, optional
``input_type`` BYTES ``[batch, 1]``, output ``embeddings``): it prepends the version's saved prompt for
``input_type`` and tokenises like training, so the result equals
``SentenceTransformer(model).encode(texts, prompt_name=input_type, normalize_embeddings=True)``. The HTTP client
is ``tritonclient.http``; ``embedforge embed --url URL "some text"`` is the same call from the shell.

Example:
    >>> from embedforge.serving.client import embed
    >>> embed("http://localhost:8000", ["what does yield do"], input_type="query").shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlparse

import numpy as np

from embedforge.errors import ServingError

DEFAULT_MODEL = "embedforge_embedder"
InputType = Literal["query", "document", "passage"]
#: The request header Triton checks before it serves its model-repository, model-config and shared-memory APIs
#: (``--http-restricted-api`` / ``--grpc-restricted-protocol`` in manifests/base/triton.yaml): those APIs load code
#: into the server, so only promote and rollback, which hold the key, may call them; inference stays open.
ADMIN_HEADER = "embedforge-admin-key"
#: Where promote and rollback read the key: the ``admin-key`` of the Secret ``embedforge-triton-admin`` on
#: Kubernetes; unset locally, where the test and embedded servers do not restrict their APIs.
ADMIN_KEY_ENV = "EMBEDFORGE_TRITON_ADMIN_KEY"


def admin_headers() -> dict[str, str] | None:
    """The header that unlocks the repository API, or None when no key is configured."""
    key = os.environ.get(ADMIN_KEY_ENV, "")
    return {ADMIN_HEADER: key} if key else None


def parse_url(url: str) -> tuple[str, bool]:
    """``(host:port, https?)`` of a Triton endpoint given as ``http(s)://host:port`` (or bare ``host:port``): the
    form both ``tritonclient`` clients, sync and asyncio, take.

    Raises:
        ServingError: ``url`` is not an http(s)://host:port URL.
    """
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ServingError(f"Triton URL {url!r} is not an http(s)://host:port URL")
    return parsed.netloc, parsed.scheme == "https"


def http_client(url: str, timeout_s: float = 60.0):
    """A ``tritonclient.http.InferenceServerClient`` for ``http(s)://host:port``.

    Raises:
        ServingError: ``url`` is not an http(s)://host:port URL.
    """
    import tritonclient.http as httpclient

    netloc, ssl = parse_url(url)
    return httpclient.InferenceServerClient(url=netloc, ssl=ssl, connection_timeout=timeout_s,
                                            network_timeout=timeout_s)


def text_inputs(texts: Sequence[str], input_type: str | Sequence[str]):
    """The ensemble's request tensors for ``texts``: ``input_type`` is one for all rows, or one per row (the
    tokenizer model picks the prompt row by row, so queries and passages can share a request)."""
    from tritonclient.http import InferInput

    kinds = [input_type] * len(texts) if isinstance(input_type, str) else list(input_type)
    if len(kinds) != len(texts):
        raise ValueError(f"text_inputs: {len(kinds)} input types for {len(texts)} texts")
    text = InferInput("text", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
    kind = InferInput("input_type", [len(texts), 1], "BYTES")
    kind.set_data_from_numpy(np.array([[k.encode("utf-8")] for k in kinds], dtype=object))
    return [text, kind]


def embed(url: str, texts: Sequence[str], input_type: InputType = "query", model: str = DEFAULT_MODEL,
          version: str = "", timeout_s: float = 60.0, client=None) -> np.ndarray:
    """Embeddings of ``texts`` from the Triton server at ``url``.

    Args:
        url: The server's HTTP endpoint, e.g. ``http://triton:8000``.
        texts: Raw texts (no prompt: the server prepends the one saved for ``input_type``).
        input_type: ``query`` or ``document`` (``passage``, NIM's name, is the same): which saved prompt.
        model: The ensemble's name (``triton.model_name``).
        version: A specific version; empty = the one the server serves (the registry's champion).
        timeout_s: Connection and request timeout.
        client: An open ``InferenceServerClient`` to reuse (then ``url`` is only used in messages).

    Returns:
        ``float32 [len(texts), dim]``, L2-normalised.

    Raises:
        ServingError: Unreachable server, unknown model/version, or an error from the server.
    """
    from tritonclient.http import InferRequestedOutput
    from tritonclient.utils import InferenceServerException

    if not texts:
        raise ServingError("embed: no texts given")
    own = client is None
    try:
        client = client or http_client(url, timeout_s)
        result = client.infer(model, text_inputs(list(texts), input_type), model_version=str(version),
                              outputs=[InferRequestedOutput("embeddings", binary_data=True)])
        return result.as_numpy("embeddings")
    except InferenceServerException as exc:
        raise ServingError(f"Triton at {url}, model {model!r}{f' version {version}' if version else ''}: "
                           f"{exc.message() or exc}") from None
    except (ConnectionError, OSError) as exc:
        raise ServingError(f"Triton at {url}: cannot reach the server ({exc})") from None
    finally:
        if own and client is not None:
            client.close()

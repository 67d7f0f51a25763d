"""The wire format of the OpenAI-compatible embeddings API: the request as OpenAI and NVIDIA NIM clients send it,
the response and error bodies exactly as OpenAI shapes them.

Request (``POST /v1/embeddings``, JSON object):

* ``model`` (required): the served model's name or one of its aliases; any other name is a 404 ``model_not_found``.
* ``input`` (required): a non-empty string, or a non-empty list of them (at most ``max_inputs``). Token-id arrays
  (a list of ints, or a list of such lists), which OpenAI also accepts, are refused with a 400: the server
  tokenises with the model's own tokenizer, so it takes text only.
* ``encoding_format``: ``float`` (default) or ``base64`` (each vector's little-endian float32 bytes, base64 encoded,
  as OpenAI sends them; the ``openai`` Python client asks for base64 and decodes it by itself).
* ``dimensions``: keep the first N dimensions and re-normalise to unit length (Matryoshka-style truncation), 1 <= N
  <= the model's dimension, as OpenAI accepts any N. A model trained with ``train.matryoshka_dims`` keeps its
  quality at those N (``GET /v1/models`` lists them as ``matryoshka_dims``); other N, and any N of a model trained
  without, lose more.
* ``input_type`` (NIM): ``query`` (default) or ``document``: which saved prompt the server prepends; NIM's
  ``passage`` is accepted as ``document``.
* ``truncate`` (NIM): ``NONE``, ``START`` or ``END``; accepted, and every value gets the served tokenizer's
  behaviour, which keeps the start of a text and cuts the end at the model's ``max_seq_length``.
* ``user`` and any other field: ignored.

Errors are :class:`ApiError`, whose :meth:`ApiError.body` is OpenAI's ``{"error": {"message", "type", "param",
"code"}}``; the ``openai`` client turns them into ``BadRequestError`` (400), ``NotFoundError`` (404),
``APIStatusError`` (413) and ``InternalServerError`` (503).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

EncodingFormat = Literal["float", "base64"]
INPUT_TYPES = ("query", "document")
#: Other names clients send for an input type (NVIDIA NIM calls documents passages).
INPUT_TYPE_ALIASES = {"passage": "document"}
TRUNCATE = ("NONE", "START", "END")
#: OpenAI's cap on the inputs of one request.
MAX_INPUTS = 2048


class ApiError(Exception):
    """A request that cannot be answered, with the HTTP status and OpenAI's error fields.

    Args:
        status: HTTP status code.
        message: What is wrong and, where it helps, what to send instead.
        param: The request field at fault (None when it is not one field).
        code: A stable machine-readable reason (``model_not_found``, ``invalid_value``, ...).
        type: OpenAI's error type: ``invalid_request_error`` for the client's mistakes, ``server_error`` for ours.
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated ``POST /v1/embeddings`` body."""

    model: str
    texts: list[str]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    input_type: str = "query"
    truncate: str = "END"


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _texts(value: object, max_inputs: int) -> list[str]:
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise bad_request("'input' must be a string or a list of strings", "input", "invalid_type")
    if not value:
        raise bad_request("'input' is an empty list: send at least one string", "input")
    if all(_is_int(x) for x in value) or all(isinstance(x, list) and all(_is_int(t) for t in x) for x in value):
        raise bad_request("'input' holds token ids: this server takes text only (it tokenises with the model's own "
                          "tokenizer); send the strings instead", "input", "token_ids_not_supported")
    if len(value) > max_inputs:
        raise ApiError(413, f"'input' has {len(value)} items; at most {max_inputs} per request: split it",
                       "input", "too_many_inputs")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise bad_request(f"'input[{i}]' is a {type(text).__name__}: every input must be a string",
                              "input", "invalid_type")
        if not text:
            raise bad_request(f"'input[{i}]' is an empty string: empty inputs cannot be embedded", "input")
    try:  # JSON can carry lone surrogates (an escaped \ud800), which no tokenizer and no UTF-8 tensor can take
        "".join(value).encode("utf-8")
    except UnicodeEncodeError:
        i = next(i for i, t in enumerate(value) if not _is_utf8(t))
        raise bad_request(f"'input[{i}]' is not valid Unicode (it holds a lone surrogate)", "input") from None
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_request(body: object, max_inputs: int = MAX_INPUTS) -> EmbeddingRequest:
    """Validate a decoded JSON body (the model name is checked by the caller, which knows what is served).

    Raises:
        ApiError: 400 for a missing or malformed field, 413 for more than ``max_inputs`` inputs.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: the served model's name (GET /v1/models lists it)", "model",
                          "missing_required_parameter" if model is None else "invalid_type")
    if "input" not in body:
        raise bad_request("'input' is required: a string or a list of strings", "input", "missing_required_parameter")
    texts = _texts(body["input"], max_inputs)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad_request(f"'encoding_format' {fmt!r}: use 'float' or 'base64'", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise bad_request(f"'dimensions' {dims!r}: a positive integer, at most the model's dimension", "dimensions")
    input_type = body.get("input_type") or "query"
    input_type = INPUT_TYPE_ALIASES.get(input_type, input_type) if isinstance(input_type, str) else input_type
    if input_type not in INPUT_TYPES:
        raise bad_request(f"'input_type' {input_type!r}: use 'query' or 'document' (or NIM's 'passage')", "input_type")
    truncate = body.get("truncate") or "END"
    if not isinstance(truncate, str) or truncate.upper() not in TRUNCATE:
        raise bad_request(f"'truncate' {truncate!r}: use 'NONE', 'START' or 'END'", "truncate")
    return EmbeddingRequest(model=model, texts=texts, encoding_format=fmt, dimensions=dims, input_type=input_type,
                            truncate=truncate.upper())


def shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` columns of unit ``vectors``, re-normalised to unit length (unchanged when None or
    the full width)."""
    from embedforge.retrieval.dimensions import truncate

    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    return truncate(vectors, dimensions)


def encode_vector(vector: np.ndarray, encoding_format: EncodingFormat) -> list[float] | str:
    """One embedding as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def embedding_list(vectors: np.ndarray, model: str, encoding_format: EncodingFormat, prompt_tokens: int) -> dict:
    """OpenAI's embeddings response: ``{"object": "list", "data": [...], "model": ..., "usage": {...}}``."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_list(ids: list[str], created: int, owned_by: str = "embedforge", dimensions: int | None = None,
               trained_dims: Sequence[int] = ()) -> dict:
    """OpenAI's ``GET /v1/models`` response; each entry also names the served width (``dimensions``, once known)
    and the Matryoshka dimensions the model was trained with (``matryoshka_dims``, where it was): the
    ``dimensions`` requests that keep quality."""
    extra = {**({"dimensions": dimensions} if dimensions else {}),
             **({"matryoshka_dims": list(trained_dims)} if trained_dims else {})}
    return {"object": "list",
            "data": [{"id": i, "object": "model", "created": created, "owned_by": owned_by, **extra} for i in ids]}

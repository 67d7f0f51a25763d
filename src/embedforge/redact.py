"""Secrets scrubbing: the one place that decides what is a credential and how it is hidden before we log it.

* :func:`redact` takes any text (a URI, a log line, an error message) and hides the credentials inside URLs in
  it: the password of ``scheme://user:password@host`` (user kept, so the reader sees *who*), and the value of
  query parameters that carry credentials (``?token=...``, ``X-Amz-Signature=...``, ``sig=...``,
  ``access_key=...``). Everything else is left as it was, so a redacted URI still says where it points.
* the exact values of secrets this process knows — an API key read from the environment is registered with
  :func:`add_secret` where it is read — are hidden wherever they appear, whatever their shape (an endpoint that
  echoes the ``Authorization`` header back in an error body cannot leak the key), as is the token after
  ``Bearer``/``Basic`` in an echoed header.
* :func:`looks_secret` says whether a config key names a credential (``api_key``, ``password``, ``authToken``);
  :func:`secret_value` whether a value is shaped like a well-known credential (``sk-...``, ``hf_...``,
  ``AKIA...``) whatever its key. MLflow params (``registry.flatten_params``) use both.

Used for MLflow tracking URIs, the S3 endpoint, LLM ``base_url`` and every URL that goes into a log line,
``registry.json`` or an MLflow param/tag.

Example:
    >>> redact("postgresql://mlflow:hunter2@db:5432/mlflow")
    'postgresql://mlflow:***@db:5432/mlflow'
    >>> redact("GET https://s3.local/b/k?X-Amz-Credential=AKIA1&X-Amz-Signature=abc&part=2 failed")
    'GET https://s3.local/b/k?X-Amz-Credential=***&X-Amz-Signature=***&part=2 failed'
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"

# A key "looks secret" when one of its words (split on . _ - and camelCase) is one of these, or when it holds
# "api key"/"access key"/"private key" as adjacent words. "max_chunk_tokens" is not secret ("tokens").
_SECRET_WORDS = {"password", "passwd", "pwd", "secret", "token", "apikey", "credential", "credentials", "auth",
                 "authorization", "bearer", "cookie", "signature", "sig"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("client", "secret")}
# Values that look like well-known credential formats are redacted whatever their key.
_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9_\-])(sk-|sk_|hf_|ghp_|gho_|github_pat_|xox[abpr]-|nvapi-|AKIA)[A-Za-z0-9_\-]{12,}")
# user-info of a URL: scheme://user:password@ (the password may hold anything but "@", "/" and whitespace).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]+)@")
# scheme://token@host (no colon): a bare token as user-info, as in https://ghp_xxx@github.com.
_BARE_TOKEN = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<token>[^:@/\s]{16,})@")
# An HTTP Authorization header value quoted back: "Bearer <token>", "Basic <base64>".
# The token must hold a digit or be 24+ characters, so that prose ("basic configuration") is left alone.
_AUTH_SCHEME = re.compile(r"(?i)\b(?P<scheme>bearer|basic)(?P<sep>\s+|[\"']?\s*[:=]\s*[\"']?)"
                          r"(?P<token>(?=[A-Za-z0-9._~+/=\-]*\d)[A-Za-z0-9._~+/=\-]{8,}|[A-Za-z0-9._~+/=\-]{24,})")
#: Secret values known to this process (API keys read from the environment), hidden by :func:`redact`.
_KNOWN: set[str] = set()
#: Shorter values are not registered: hiding every "abc" in every message would hide more than the secret.
MIN_SECRET_CHARS = 6
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<key>[A-Za-z0-9_.\-]+)=(?P<value>[^&;#\s'\"]*)")


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", key.lower()) if w]


def looks_secret(key: str) -> bool:
    """True when the last part of a dotted key names a credential (api_key, token, password, secret, ...)."""
    words = _words(key.rsplit(".", 1)[-1])
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any((a, b) in _SECRET_PAIRS for a, b in zip(words, words[1:]))


def secret_value(text: str) -> bool:
    """True when ``text`` starts with a well-known credential format (OpenAI/HF/GitHub/Slack/NVIDIA/AWS key)."""
    return _SECRET_VALUE.match(text.strip()) is not None


def add_secret(value: str | None) -> None:
    """Have :func:`redact` hide ``value`` (and its percent-encoded form) wherever it appears from now on, in this
    process: call it where a secret is read (an API key from the environment). Values shorter than
    :data:`MIN_SECRET_CHARS` are ignored."""
    from urllib.parse import quote

    if value and len(value.strip()) >= MIN_SECRET_CHARS:
        _KNOWN.add(value.strip())
        _KNOWN.add(quote(value.strip(), safe=""))


def _query_sub(m: re.Match) -> str:
    key = m.group("key")
    secret = looks_secret(key)
    return f"{m.group('sep')}{key}={REDACTED}" if secret and m.group("value") else m.group(0)


def redact(text: str) -> str:
    """``text`` with the credentials inside any URL it contains replaced by ``***``.

    Hides the password of ``scheme://user:password@host`` (the user stays), a bare token used as user-info
    (``https://<token>@host``), the values of credential query parameters, the token of a quoted
    ``Authorization: Bearer``/``Basic`` value, credential-shaped values (:func:`secret_value`) and every secret
    registered with :func:`add_secret`, anywhere. Safe on any string: other text comes back unchanged.
    """
    if not text:
        return text
    out = text
    for secret in sorted(_KNOWN, key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{REDACTED}@", out)
    out = _BARE_TOKEN.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", out)
    out = _QUERY_PARAM.sub(_query_sub, out)
    out = _AUTH_SCHEME.sub(lambda m: f"{m.group('scheme')}{m.group('sep')}{REDACTED}", out)
    return _SECRET_VALUE.sub(REDACTED, out)


def redact_tree(obj: Any) -> Any:
    """``obj`` (a config dict, a list, a string ...) with :func:`redact` applied to every string in it, keys
    left as they are: what a manifest or a printed config holds."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v) for v in obj]
    return obj


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line goes through :func:`redact`: libraries log URLs with their user-info
    (httpx logs each request's URL at INFO), and a stage's log ends up in files and in kfp's pod logs."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


__all__ = ["REDACTED", "RedactingFormatter", "add_secret", "looks_secret", "redact", "redact_tree", "secret_value"]

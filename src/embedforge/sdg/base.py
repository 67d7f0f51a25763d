"""The generator interface every synthetic-data generator implements.

A generator receives the chunks of ONE split at a time (so a pair never mixes train and eval documents) and
returns :class:`~embedforge.contracts.Pair` records whose ``split`` is that split. Generators are registered by
name in :data:`GENERATORS` and built from :class:`~embedforge.config.SdgConfig` by :func:`make_generator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from embedforge.config import SdgConfig
    from embedforge.contracts import Chunk, Pair, Split


class PairGenerator(Protocol):
    name: str

    def generate(self, chunks: list["Chunk"], split: "Split") -> list["Pair"]:
        """Pairs whose positives are ids of ``chunks`` (chunk- or document-level), all with ``split``."""
        ...

    def stats(self) -> dict[str, int | float]:
        """Counters for summary.json/MLflow (requests, tokens, failures ...); may be empty."""
        ...


GENERATORS: dict[str, Callable[["SdgConfig"], PairGenerator]] = {}


def register(name: str) -> Callable:
    def deco(factory: Callable[["SdgConfig"], PairGenerator]) -> Callable:
        GENERATORS[name] = factory
        return factory

    return deco


def make_generator(cfg: "SdgConfig") -> PairGenerator:
    # importing the modules registers their generators
    from embedforge.sdg import offline  # noqa: F401

    if cfg.generator == "llm":
        from embedforge.sdg import llm  # noqa: F401
    try:
        return GENERATORS[cfg.generator](cfg)
    except KeyError:
        raise ValueError(f"unknown sdg.generator {cfg.generator!r}; known: {sorted(GENERATORS)}") from None

"""The generator protocol every synthetic-data generator implements.

A generator receives the chunks of ONE split at a time (so a pair never mixes train and eval documents) and
returns :class:`~embedforge.contracts.Pair` records whose ``split`` is that split, at most ``max_pairs`` of them.
:func:`embedforge.stages.sdg.make_generator` builds the one named by ``SdgConfig.generator``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from embedforge.contracts import Chunk, Pair, Split


class PairGenerator(Protocol):
    name: str

    def generate(self, chunks: list[Chunk], split: Split, max_pairs: int | None = None) -> list[Pair]:
        """Pairs whose positives are ids of ``chunks`` (chunk- or document-level), all with ``split``; at most
        ``max_pairs`` of them (None: the generator's own cap)."""
        ...

    def stats(self) -> dict[str, int | float]:
        """Counters for summary.json/MLflow (requests, tokens, failures ...); may be empty."""
        ...

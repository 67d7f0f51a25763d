"""How mine and train treat a pair, by the kind of source that made it: the generated-pair policy, in one place.

The offline generator (:mod:`embedforge.sdg.offline`: inverse cloze, titles) makes noisy pairs: some queries are
too vague to find their passage, and a synthetic query's nearest neighbours are mostly relevant too. Its pairs are
therefore trained conservatively:

* mine drops a pair whose positive the base model does not rank within ``consistency_rank`` chunks of other
  documents (a round-trip consistency filter), and gives its examples ``num_negatives`` mined hard negatives
  (default 0: in-batch negatives only);
* train, when ``train.base_weight`` is unset and most rows come from such pairs, saves WiSE-FT weights
  ``base_weight`` of the way back to the base model.

Every other source (bring-your-own pairs, LLM pairs) gets ``mine.num_negatives``, no filter and no WiSE-FT.

:func:`resolve` turns a :class:`~embedforge.config.MineConfig` into one :class:`PairPolicy` per :data:`PairKind`;
mine applies them and records them, with the pairs and rows each produced, as a :class:`MinedPolicy` in its result
(``manifest.json``, key ``policy``); train reads that record (:meth:`MinedPolicy.base_weight`) instead of deciding
again what counts as generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from embedforge.sdg.offline import SOURCE_PREFIX

if TYPE_CHECKING:
    from embedforge.config import MineConfig

#: ``offline``: pairs of the offline generator (``Pair.source`` ``offline/*``); ``default``: every other source.
PairKind = Literal["offline", "default"]
PAIR_KINDS: tuple[PairKind, ...] = ("offline", "default")

#: WiSE-FT weight for offline-generator pairs: the saved weights lie halfway between fine-tuned and base.
OFFLINE_BASE_WEIGHT = 0.5


class PairPolicy(BaseModel):
    """What mine and train do with the pairs of one kind of source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_negatives: int = Field(ge=0, description="Negatives per example mine fills up to with mined ones.")
    consistency_rank: int = Field(
        ge=0, description="Mine keeps a pair only if fewer than this many chunks of other documents outscore its "
        "positive (base model); 0 = keep every pair.")
    base_weight: float = Field(
        ge=0.0, lt=1.0, description="WiSE-FT weight train uses when these pairs make most rows and "
        "train.base_weight is unset.")


class AppliedPolicy(PairPolicy):
    """A :class:`PairPolicy` as mine applied it, with what it produced."""

    pairs: int = Field(0, ge=0, description="Train pairs of this kind that mine read.")
    dropped_by_consistency: int = Field(0, ge=0, description="Of those, pairs the consistency filter dropped.")
    examples: int = Field(0, ge=0, description="Rows of train.jsonl made from this kind's pairs.")


class MinedPolicy(BaseModel):
    """The policy of every pair kind and what it produced: the ``policy`` record of the mine result."""

    model_config = ConfigDict(extra="forbid")

    kinds: dict[PairKind, AppliedPolicy]

    def base_weight(self) -> float:
        """The WiSE-FT weight of the kind that made more than half of the rows; 0 when no kind did."""
        total = sum(p.examples for p in self.kinds.values())
        return next((p.base_weight for p in self.kinds.values() if 2 * p.examples > total), 0.0)


def kind_of(source: str) -> PairKind:
    """The kind of a pair's ``source`` (:attr:`embedforge.contracts.Pair.source`)."""
    return "offline" if source.startswith(SOURCE_PREFIX) else "default"


def resolve(cfg: MineConfig) -> dict[PairKind, PairPolicy]:
    """The policy of each pair kind under ``cfg``."""
    return {
        "offline": PairPolicy(num_negatives=cfg.offline_num_negatives, consistency_rank=cfg.offline_consistency_rank,
                              base_weight=OFFLINE_BASE_WEIGHT),
        "default": PairPolicy(num_negatives=cfg.num_negatives, consistency_rank=0, base_weight=0.0),
    }

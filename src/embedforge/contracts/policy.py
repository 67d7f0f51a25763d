"""How mine and train treat a pair, by the kind of source that made it: the generated-pair policy, in one place.

The offline generator (``embedforge.stages.sdg.offline``: inverse cloze, titles) makes noisy pairs: some queries are
too vague to find their passage, and a synthetic query's nearest neighbours are mostly relevant too. Its pairs are
therefore trained conservatively:

* mine drops a pair whose positive the base model does not rank within ``consistency_rank`` chunks of other
  documents (a round-trip consistency filter), and gives its examples ``num_negatives`` mined hard negatives
  (default 0: in-batch negatives only);
* train, when ``train.base_weight`` is unset and most rows come from such pairs, saves WiSE-FT weights
  ``base_weight`` of the way back to the base model.

Every other source (bring-your-own pairs, LLM pairs) gets ``mine.num_negatives``, no filter and no WiSE-FT.

:func:`resolve` turns a :class:`~embedforge.config.MineConfig` into one :class:`PairPolicy` per :data:`PairKind`;
mine applies them and records them, with the pairs and rows each produced, as a
:class:`~embedforge.contracts.MinedPolicy` in its typed result (:class:`~embedforge.contracts.MineResult`); train
reads that record (:meth:`MinedPolicy.base_weight`) instead of deciding
again what counts as generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedforge.contracts import PairKind, PairPolicy

#: ``Pair.source`` of every pair the offline generator makes starts with this.
SOURCE_PREFIX = "offline/"

if TYPE_CHECKING:
    from embedforge.config import MineConfig

#: WiSE-FT weight for offline-generator pairs: the saved weights lie halfway between fine-tuned and base.
OFFLINE_BASE_WEIGHT = 0.5


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

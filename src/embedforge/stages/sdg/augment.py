"""Augmentation: offline pairs of the user's train documents made beside the user's own pairs (``sdg.augment``).

Human-judged pairs are few and teach the query style; the corpus itself has far more text. Inverse-cloze and title
pairs (:class:`~embedforge.stages.sdg.offline.OfflineGenerator`, its usual knobs) of the TRAIN documents add unsupervised
in-domain rows. They help some collections and hurt others, so they are marked: mine writes their rows with
``augment`` set, and ``train.schedule=auto`` trains on them only where its cross-fitted probes show a gain on the
user's held-out queries. Eval documents are never used, so the gate's held-out pairs stay unseen; a generated query
equal to a user's query (case and whitespace ignored) is dropped.
"""

from __future__ import annotations

from embedforge.config import SdgConfig
from embedforge.contracts import Chunk, Pair
from embedforge.retrieval.text import query_key


def augment_pairs(pairs: list[Pair], chunks: list[Chunk], cfg: SdgConfig) -> tuple[list[Pair], dict[str, int]]:
    """Offline train pairs of the train chunks, at most ``cfg.augment`` x the judged positives of ``pairs``' train
    pairs and at most ``cfg.max_pairs`` (none when that is 0 or there are no train pairs), and counters
    (``augment_cap``, ``augment_pairs``)."""
    from embedforge.stages.sdg.offline import OfflineGenerator

    judged = sum(len(p.positive_chunk_ids) or len(p.positive_doc_ids) for p in pairs if p.split == "train")
    cap = min(round(cfg.augment * judged), cfg.max_pairs)
    if cap < 1:
        return [], {"augment_cap": 0, "augment_pairs": 0}
    taken = {query_key(p.query) for p in pairs}
    train_chunks = [c for c in chunks if c.split == "train"]
    made = [p for p in OfflineGenerator(cfg).generate(train_chunks, "train", max_pairs=cap)
            if query_key(p.query) not in taken]
    return made, {"augment_cap": cap, "augment_pairs": len(made)}

"""Topic-aware batches: the anchors of a step drawn from one cluster of similar queries (TAS-B's sampling).

With rows shuffled at random, a query's in-batch negatives are the positives of unrelated queries — easy to tell
apart, so most of the contrastive signal comes from the few mined negatives of each row. Drawing the rows of a
batch from one cluster of similar queries makes the other rows' positives near-misses on the same subject (the
negatives a retriever must learn to rank below the answer), at no extra cost per step (Hofstätter et al. 2021,
"Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware Sampling").

* :func:`cluster_anchors` (mine): k-means (scikit-learn, seeded) over the base model's normalised query
  embeddings, about ``anchors_per_topic`` queries per cluster; written as ``topics.jsonl`` (:func:`write_topics`)
  beside ``train.jsonl``, which stays a plain sentence-transformers file.
* :func:`topic_blocks` (train, ``train.batching=topic``): an epoch's seeded row order regrouped into blocks of
  ``batch_size`` rows of one topic, the blocks in seeded random order, so consecutive steps still visit different
  subjects; the no-duplicates sampler then fills batches from that order.

False negatives: similar queries share relevant documents more often; every text mining knows as positive for an
anchor stays masked in the batch (:func:`embedforge.train.positives.known_positives`), so only unjudged relevant
texts can become negatives — as in mined negatives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedforge import contracts

TOPICS_FILE = "topics.jsonl"
SEED = 13


def cluster_anchors(queries: list[str], embeddings: np.ndarray, anchors_per_topic: int) -> dict[str, int]:
    """Query text -> topic id: k-means with ``k = round(len(queries) / anchors_per_topic)`` over the L2-normalised
    ``embeddings`` (one row per query; Euclidean k-means on the unit sphere ranks like cosine). Empty when ``k``
    is below 2 (one topic is plain shuffling) or ``anchors_per_topic`` is 0."""
    k = round(len(queries) / anchors_per_topic) if anchors_per_topic else 0
    if k < 2:
        return {}
    from sklearn.cluster import KMeans

    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=3, random_state=SEED).fit_predict(x.astype(np.float64))
    return {q: int(t) for q, t in zip(queries, labels)}


def write_topics(out_dir: str | Path, topics: dict[str, int]) -> int:
    """Write ``topics.jsonl`` (``{"anchor", "topic"}`` per query; when ``topics`` is empty, none, and a stale one
    of an earlier run in ``out_dir`` is removed); returns the number of lines."""
    if not topics:
        (Path(out_dir) / TOPICS_FILE).unlink(missing_ok=True)
        return 0
    return contracts.write_jsonl(Path(out_dir) / TOPICS_FILE, ({"anchor": a, "topic": t} for a, t in sorted(topics.items())))


def read_topics(mined_dir: str | Path) -> dict[str, int]:
    """Anchor text -> topic id from ``topics.jsonl`` of a mine folder; empty when the folder has none."""
    path = Path(mined_dir) / TOPICS_FILE
    if not path.is_file():
        return {}
    return {row["anchor"]: int(row["topic"]) for _, row in contracts.iter_jsonl(path)}


def topic_blocks(order: list[int], examples: list, batch_size: int, rng: np.random.Generator) -> list[int]:
    """``order`` (row indices, already shuffled) regrouped into blocks of ``batch_size`` rows of one topic, the
    blocks shuffled with ``rng`` and concatenated. Within a topic the rows are dealt round-robin over its anchors
    (each anchor's rows, and the anchors, in their ``order``), so that a block holds as many different anchors as
    the topic has — a row whose anchor is already in the batch would be deferred by the no-duplicates sampler into
    the next block's batch. ``examples[i].topic``: row ``i``'s topic (-1: none; such rows form a topic of their
    own)."""
    by_topic: dict[int, dict[str, list[int]]] = {}
    for i in order:
        by_topic.setdefault(examples[i].topic, {}).setdefault(examples[i].anchor, []).append(i)
    blocks = []
    for _, anchors in sorted(by_topic.items()):
        queues = list(anchors.values())
        dealt = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
        blocks += [dealt[s:s + batch_size] for s in range(0, len(dealt), batch_size)]
    return [i for b in rng.permutation(len(blocks)).tolist() for i in blocks[b]]


def attach(examples: list, mined_dir: str | Path) -> list:
    """``examples`` (TrainExample rows) with each row's ``topic`` from the mine folder's ``topics.jsonl`` (-1 for
    an anchor it does not name); unchanged when the folder has no topics (too few queries for two clusters, or
    ``mine.topic_anchors=0``), which leaves plain shuffled batches."""
    topics = read_topics(mined_dir)
    if not topics:
        return examples
    return [ex.model_copy(update={"topic": topics.get(ex.anchor, -1)}) for ex in examples]

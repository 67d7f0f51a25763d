"""Topic-aware batches (train.batching=topic): k-means clusters of real base-model query embeddings written by
mine, and the sampler drawing a batch's rows from one cluster — on a real model and real mining output."""

from __future__ import annotations

from collections import Counter

import numpy as np

from embedforge import contracts, mine, train
from embedforge.config import MineConfig, PromptsConfig, TrainConfig
from embedforge.contracts import TrainExample
from embedforge.encode import encode, load_model
from embedforge.train import topics
from embedforge.train.batching import plan_steps

SUBJECTS = {
    "cooking": ["how long do I boil an egg", "best way to sear a steak", "how to knead bread dough",
                "what temperature to roast chicken", "how to make a roux for gravy", "how to caramelize onions"],
    "astronomy": ["how far away is the andromeda galaxy", "why do stars twinkle at night", "what is a neutron star",
                  "how are black holes formed", "when is the next solar eclipse", "how many moons does jupiter have"],
    "taxes": ["how do I file a tax return late", "can I deduct home office expenses", "what is capital gains tax",
              "how is income tax withholding calculated", "when are quarterly estimated taxes due",
              "do I pay tax on a gift from my parents"],
}


def test_clusters_put_queries_on_one_subject_together(base_model):
    queries = [q for qs in SUBJECTS.values() for q in qs]
    emb = encode(load_model(base_model, "cpu"), queries, kind="query")
    found = topics.cluster_anchors(queries, emb, anchors_per_topic=6)  # 18 queries / 6 -> 3 clusters
    assert len(set(found.values())) == 3
    for qs in SUBJECTS.values():
        assert len({found[q] for q in qs}) == 1, qs
    assert found == topics.cluster_anchors(queries, emb, anchors_per_topic=6)  # seeded: the same clusters


def test_fewer_queries_than_two_topics_need_write_no_file_and_remove_a_stale_one(tmp_path):
    emb = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    queries = [f"q{i}" for i in range(10)]
    assert topics.write_topics(tmp_path, topics.cluster_anchors(queries, emb, anchors_per_topic=4)) == 10
    assert topics.read_topics(tmp_path) and (tmp_path / topics.TOPICS_FILE).is_file()
    assert topics.cluster_anchors(queries, emb, anchors_per_topic=32) == {}  # round(10 / 32) < 2 clusters
    assert topics.cluster_anchors(queries, emb, anchors_per_topic=0) == {}  # mine.topic_anchors=0: off
    assert topics.write_topics(tmp_path, {}) == 0 and not (tmp_path / topics.TOPICS_FILE).exists()
    assert topics.read_topics(tmp_path) == {}


def _rows(n_topics: int, per_topic: int, with_topics: bool) -> list[TrainExample]:
    return [TrainExample(anchor=f"t{t} q{i}", positive=f"t{t} doc{i}", negatives=[f"neg {t} {i}"],
                         topic=t if with_topics else -1) for t in range(n_topics) for i in range(per_topic)]


def test_topic_batches_draw_each_batch_from_one_topic_and_still_train_every_row_once_an_epoch():
    rows = _rows(4, 16, with_topics=True)
    plan = plan_steps(rows, 8, 1.0, seed=13)
    assert sorted(i for b in plan for i in b) == list(range(64))
    assert all(len({rows[i].topic for i in b}) == 1 for b in plan)
    first_topics = [rows[b[0]].topic for b in plan]
    assert len(set(first_topics[:4])) > 1  # blocks of different topics alternate, not one topic's run of steps
    assert plan == plan_steps(rows, 8, 1.0, seed=13) and plan != plan_steps(rows, 8, 1.0, seed=14)
    shuffled = plan_steps(_rows(4, 16, with_topics=False), 8, 1.0, seed=13)  # train.batching=shuffle
    assert sum(len({i // 16 for i in b}) > 1 for b in shuffled) > len(shuffled) // 2


def test_mine_writes_topics_and_train_batches_by_them(tmp_path, chunks_dir, pairs_dir, base_model):
    mine.run(chunks_dir, pairs_dir, tmp_path / "mined", MineConfig(topic_anchors=4, offline_consistency_rank=0),
             base_model=base_model)
    rows = contracts.read_train_examples(tmp_path / "mined")
    found = topics.read_topics(tmp_path / "mined")
    assert set(found) == {r.anchor for r in rows}
    n_topics = contracts.read_manifest(tmp_path / "mined").counts["topics"]
    assert n_topics == len(set(found.values())) >= 2
    attached = topics.attach(rows, tmp_path / "mined")
    assert all(r.topic == found[r.anchor] for r in attached)
    plan = plan_steps(attached, 4, 1.0, seed=13)

    def share_of_main_topic(plan: list[list[int]]) -> float:
        return sum(Counter(attached[i].topic for i in b).most_common(1)[0][1] for b in plan) / sum(map(len, plan))

    # k-means clusters are uneven (1 to 9 queries here): a cluster's last, partial block shares a batch with the next
    assert share_of_main_topic(plan) > 0.65 and share_of_main_topic(plan) > 1.8 * share_of_main_topic(
        plan_steps(rows, 4, 1.0, seed=13))  # the same rows shuffled
    cfg = TrainConfig(batching="topic", batch_size=4, epochs=0.2, max_seq_length=32, device="cpu")
    manifest = train.run(tmp_path / "mined", tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    assert manifest.counts["steps"] == max(1, round(0.2 * len(plan_steps(attached, 4, 1.0, seed=cfg.seed))))

"""Mine stage: real base model, real FAISS, on the shared tiny-corpus artifacts (chunks_dir, pairs_dir, mined_dir)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MINE_AS_HUMAN

from embedforge import contracts
from embedforge.config import MineConfig
from embedforge.contracts import AppliedPolicy, Pair, TrainExample
from embedforge.errors import InputError
from embedforge.stages import mine


@pytest.fixture(scope="module")
def st_model(base_model):
    """The base model loaded directly with sentence-transformers (independent of embedforge.retrieval.encode)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(base_model, device="cpu")


@pytest.fixture(scope="module")
def rows(mined_dir) -> list[TrainExample]:
    return contracts.read_train_examples(mined_dir)


@pytest.fixture(scope="module")
def train_pairs(pairs_dir) -> list[Pair]:
    return [p for p in contracts.read_pairs(pairs_dir) if p.split == "train"]


def _cos(model, queries: list[str], docs: list[str]) -> np.ndarray:
    q = model.encode(queries, normalize_embeddings=True, convert_to_numpy=True)
    d = model.encode(docs, normalize_embeddings=True, convert_to_numpy=True)
    return q @ d.T


def test_writes_rows_embeddings_and_manifest(mined_dir, chunks_dir, rows):
    chunks = contracts.read_chunks(chunks_dir)
    emb, ids = contracts.read_embeddings(mined_dir)
    assert emb.shape[0] == len(chunks) and emb.dtype == np.float32
    assert ids == [c.chunk_id for c in chunks]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    m = contracts.read_manifest(mined_dir)
    assert m.stage == "mine"
    assert m.counts["examples"] == len(rows) > 0
    assert m.counts["chunks_embedded"] == len(chunks)
    assert m.counts["negatives_total"] == sum(len(r.negatives) for r in rows)
    assert m.counts["examples_short_of_negatives"] == sum(len(r.negatives) < 4 for r in rows)
    assert m.result.embedding_dim == emb.shape[1]
    assert m.result.mean_positive_score > m.result.mean_negative_score
    first = json.loads((Path(mined_dir) / contracts.TRAIN_FILE).read_text().splitlines()[0])
    assert list(first)[:2] == ["anchor", "positive"] and all(k.startswith("negative_") for k in list(first)[2:])


def test_saved_embeddings_are_the_base_model_document_embeddings(mined_dir, chunks_dir, st_model):
    chunks = contracts.read_chunks(chunks_dir)
    emb, _ = contracts.read_embeddings(mined_dir)
    sample = [0, len(chunks) // 2, len(chunks) - 1]
    expected = st_model.encode([chunks[i].text for i in sample], normalize_embeddings=True)
    np.testing.assert_allclose(emb[sample], expected, atol=1e-5)


def test_only_train_pairs_become_rows(rows, train_pairs, pairs_dir):
    train_queries = {p.query for p in train_pairs}
    eval_only = {p.query for p in contracts.read_pairs(pairs_dir) if p.split == "eval"} - train_queries
    anchors = {r.anchor for r in rows}
    assert anchors <= train_queries
    assert not anchors & eval_only
    assert anchors == train_queries  # every train pair produced at least one row


def test_negatives_never_come_from_a_positive_document(rows, train_pairs, chunks_dir):
    chunks = contracts.read_chunks(chunks_dir)
    by_id = {c.chunk_id: c for c in chunks}
    docs_of_text: dict[str, set[str]] = {}
    for c in chunks:
        docs_of_text.setdefault(c.text, set()).add(c.doc_id)
    positive_docs: dict[str, set[str]] = {}
    for p in train_pairs:
        docs = set(p.positive_doc_ids) | {by_id[c].doc_id for c in p.positive_chunk_ids}
        positive_docs.setdefault(p.query, set()).update(docs)
    checked = 0
    for r in rows:
        assert r.positive not in r.negatives
        assert len(set(r.negatives)) == len(r.negatives)
        for n in r.negatives:
            assert not docs_of_text[n] & positive_docs[r.anchor], (r.anchor, n[:60])
            checked += 1
    assert checked > 0


def test_document_relevance_positive_is_the_best_chunk_of_the_document(tmp_path, chunks_dir, base_model, st_model):
    chunks = contracts.read_chunks(chunks_dir)
    multi = sorted({c.doc_id for c in chunks if c.title and sum(o.doc_id == c.doc_id for o in chunks) > 1})[:3]
    assert multi, "the tiny corpus should have titled multi-chunk documents"
    titles = {d: next(c.title for c in chunks if c.doc_id == d) for d in multi}
    pairs = [Pair(query_id=f"t{i}", query=titles[d], positive_doc_ids=[d], relevance="document", split="train")
             for i, d in enumerate(multi)]
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, pairs)
    mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", MineConfig(), base_model=base_model)
    rows = contracts.read_train_examples(tmp_path / "mined")
    for p in pairs:
        doc_chunks = [c.text for c in chunks if c.doc_id == p.positive_doc_ids[0]]
        best = doc_chunks[int(np.argmax(_cos(st_model, [p.query], doc_chunks)[0]))]
        assert [r.positive for r in rows if r.anchor == p.query] == [best]


@pytest.fixture(scope="module")
def margin_mined(tmp_path_factory, chunks_dir, pairs_dir, base_model) -> Path:
    """The shared pairs mined with the positive-aware margin on (0.95, NV-Retriever's setting)."""
    out = tmp_path_factory.mktemp("margin") / "mined"
    mine.run(chunks_dir, pairs_dir, out, MineConfig(**MINE_AS_HUMAN, margin=0.95), base_model=base_model)
    return out


def test_mined_negatives_respect_the_positive_aware_margin(margin_mined, st_model):
    """Scores recomputed with the model loaded directly: every mined negative scores <= margin x the query's best
    positive (the default margin_reference)."""
    assert MineConfig().margin_reference == "best_positive"
    assert contracts.read_manifest(margin_mined).counts["dropped_by_margin"] > 0  # the margin actually bites here
    rows = contracts.read_train_examples(margin_mined)
    sample = [r for r in rows if r.negatives][:12]
    for r in sample:
        positives = [x.positive for x in rows if x.anchor == r.anchor]
        s = _cos(st_model, [r.anchor], [*positives, *r.negatives])[0]
        best, negs = s[: len(positives)].max(), s[len(positives):]
        assert np.all(negs <= 0.95 * best + 1e-4), (r.anchor, s)


def test_skip_top_starts_the_negatives_after_the_best_candidates(tmp_path, chunks_dir, pairs_dir, base_model, rows):
    """skip_top=2: every row's negatives are the ones ranked 3..6 when six are mined without skipping (the same
    candidates, the two best left out); off by default."""
    assert MineConfig().skip_top == 0
    wide, skipped = tmp_path / "wide", tmp_path / "skipped"
    mine.run(chunks_dir, pairs_dir, wide, MineConfig(**{**MINE_AS_HUMAN, "offline_num_negatives": 6}), base_model=base_model)
    mine.run(chunks_dir, pairs_dir, skipped, MineConfig(**MINE_AS_HUMAN, skip_top=2), base_model=base_model)
    wide_rows, skipped_rows = contracts.read_train_examples(wide), contracts.read_train_examples(skipped)
    assert [(r.anchor, r.positive) for r in skipped_rows] == [(r.anchor, r.positive) for r in wide_rows]
    assert all(len(w.negatives) == 6 for w in wide_rows)
    for w, s, plain in zip(wide_rows, skipped_rows, rows):
        assert s.negatives == w.negatives[2:6]
        assert plain.negatives == w.negatives[:4]  # the default takes the best four


def test_margin_off_by_default_takes_the_top_candidates(mined_dir, rows, margin_mined, st_model):
    """Default margin 0: nothing is dropped for its score, so a query's negatives are at least as hard, rank by
    rank, as under the 0.95 margin, and where the margin dropped candidates some negative scores above it."""
    assert MineConfig().margin == 0.0
    assert contracts.read_manifest(mined_dir).counts["dropped_by_margin"] == 0
    with_margin = {r.anchor: r for r in contracts.read_train_examples(margin_mined)}
    harder = 0
    for r in [r for r in rows if len(r.negatives) == 4][:12]:
        other = with_margin[r.anchor]
        positives = [x.positive for x in rows if x.anchor == r.anchor]
        s = _cos(st_model, [r.anchor], [*positives, *r.negatives, *other.negatives])[0]
        best, off, on = s[: len(positives)].max(), s[len(positives): len(positives) + 4], s[len(positives) + 4:]
        assert np.all(np.sort(off)[::-1][: len(on)] >= np.sort(on)[::-1] - 1e-4), (r.anchor, off, on)
        harder += int(off.max() > 0.95 * best + 1e-4)
    assert harder > 0  # the filter really is off: some negatives are ones the margin would have dropped


def test_pair_with_several_positives(tmp_path, chunks_dir, base_model, st_model):
    """One row per positive chunk up to the cap; with margin_reference="positive" each row's negatives stay under
    margin x its own positive; no negative ever comes from the positive document."""
    chunks = contracts.read_chunks(chunks_dir)
    doc = max({c.doc_id for c in chunks}, key=lambda d: sum(c.doc_id == d for c in chunks))
    own = [c for c in chunks if c.doc_id == doc]
    assert len(own) >= 3
    pair = Pair(query_id="multi", query="How is the statement executed?", positive_chunk_ids=[c.chunk_id for c in own],
                positive_doc_ids=[doc], split="train")
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [pair])
    cfg = MineConfig(max_positives_per_pair=2, margin_reference="positive", margin=0.9)
    mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", cfg, base_model=base_model)
    got = contracts.read_train_examples(tmp_path / "mined")
    assert [r.positive for r in got] == [own[0].text, own[1].text]
    own_texts = {c.text for c in own}
    for r in got:
        assert r.negatives and not own_texts & set(r.negatives)
        s = _cos(st_model, [r.anchor], [r.positive, *r.negatives])[0]
        assert np.all(s[1:] <= cfg.margin * s[0] + 1e-4), s


def test_user_negatives_come_first_and_mining_fills_up(tmp_path, chunks_dir, train_pairs, base_model):
    chunk_pairs = [p for p in train_pairs if p.relevance == "chunk"][:4]
    user = ["A user-written negative about something else entirely.", "Another hand-picked negative passage."]
    pairs = [p.model_copy(update={"negatives": list(user)}) for p in chunk_pairs]
    # A user negative equal to the positive text is dropped, not trained against.
    by_id = {c.chunk_id: c for c in contracts.read_chunks(chunks_dir)}
    positive0 = pairs[0].positive_text or by_id[pairs[0].positive_chunk_ids[0]].text
    pairs[0] = pairs[0].model_copy(update={"negatives": [*user, positive0]})
    pairs_dir = tmp_path / "pairs"
    contracts.write_jsonl(pairs_dir / contracts.PAIRS_FILE, pairs)
    m = mine.run(chunks_dir, pairs_dir, tmp_path / "mined", MineConfig(**MINE_AS_HUMAN), base_model=base_model)
    got = contracts.read_train_examples(tmp_path / "mined")
    assert len(got) == len(pairs)
    for r in got:
        assert r.negatives[:2] == user
        assert len(r.negatives) == 4  # two mined after the two user negatives
        assert r.positive not in r.negatives
    assert m.counts["user_negatives"] == 2 * len(pairs)


def test_component_is_deterministic_and_matches_the_library(tmp_path, chunks_dir, pairs_dir, mined_dir, base_model):
    """The KFP component, run on the same inputs, reproduces the fixture's artifact byte for byte."""
    from embedforge.components.mine.component import mine as mine_component
    from kfp import dsl

    out = dsl.Dataset(uri=str(tmp_path / "mined"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    mine_component.python_func(
        chunks=dsl.Dataset(uri=str(chunks_dir)),
        pairs=dsl.Dataset(uri=str(pairs_dir)),
        base_model=base_model,
        config=MineConfig(**MINE_AS_HUMAN).model_dump(),
        mined=out,
        metrics=metrics,
    )
    for name in (contracts.TRAIN_FILE, contracts.EMBEDDING_IDS_FILE):
        assert (Path(out.path) / name).read_bytes() == (Path(mined_dir) / name).read_bytes()
    a, _ = contracts.read_embeddings(out.path)
    b, _ = contracts.read_embeddings(mined_dir)
    np.testing.assert_array_equal(a, b)
    assert metrics.metadata["examples"] == contracts.read_manifest(mined_dir).counts["examples"]
    assert 0 < metrics.metadata["mean_positive_score"] <= 1


def test_no_train_pairs_is_an_input_error(tmp_path, chunks_dir, train_pairs, base_model):
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [p.model_copy(update={"split": "eval"}) for p in train_pairs[:3]])
    with pytest.raises(InputError, match="no pairs with split 'train'"):
        mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "out", MineConfig(), base_model=base_model)


def test_unknown_positive_chunk_is_an_input_error(tmp_path, chunks_dir, base_model):
    bad = Pair(query_id="q1", query="what is it", positive_chunk_ids=["nope.rst#0"], split="train")
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [bad])
    with pytest.raises(InputError, match="q1"):
        mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "out", MineConfig(), base_model=base_model)


def test_consistency_filter_drops_generated_pairs_the_base_model_cannot_find(tmp_path, chunks_dir, train_pairs,
                                                                            base_model, st_model):
    """mine.offline_consistency_rank=k keeps a generated pair only if at most k-1 chunks of other documents outscore its
    positive (checked here with sentence-transformers directly); bring-your-own pairs are never filtered."""
    chunks = contracts.read_chunks(chunks_dir)
    by_id = {c.chunk_id: c for c in chunks}
    pairs = [p for p in train_pairs if p.relevance == "chunk"][:30]
    nonsense = Pair(query_id="vague", query="Zebra marmalade orbits the quiet violin on Tuesdays.",
                    positive_chunk_ids=[pairs[0].positive_chunk_ids[0]], split="train", source="offline/ict")
    human = nonsense.model_copy(update={"query_id": "human", "query": "Zebra marmalade orbits a violin?", "source": "byo"})
    pairs = [*pairs, nonsense, human]
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, pairs)
    k = 3
    m = mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", MineConfig(**{**MINE_AS_HUMAN, "offline_consistency_rank": k}), base_model=base_model)
    anchors = {r.anchor for r in contracts.read_train_examples(tmp_path / "mined")}

    texts = [c.text for c in chunks]
    expected_dropped = 0
    for p in pairs:
        chunk = by_id[p.positive_chunk_ids[0]]
        s = _cos(st_model, [p.query], [p.positive_text or chunk.text, *texts])[0]
        others = s[1:][[c.doc_id != chunk.doc_id for c in chunks]]
        ahead = int(np.sum(others > s[0]))
        if np.min(np.abs(others - s[0])) < 1e-4:
            continue  # a tie within float noise: either answer is right
        keep = p.source == "byo" or ahead < k
        assert (p.query in anchors) == keep, (p.query_id, ahead)
        expected_dropped += not keep
    assert "Zebra marmalade orbits the quiet violin on Tuesdays." not in anchors
    assert "Zebra marmalade orbits a violin?" in anchors
    assert 1 <= m.counts["pairs_dropped_by_consistency"] >= expected_dropped
    policy = m.result.policy
    assert policy.kinds["offline"].consistency_rank == k and policy.kinds["default"].consistency_rank == 0
    assert policy.kinds["offline"].dropped_by_consistency == m.counts["pairs_dropped_by_consistency"]
    assert (policy.kinds["offline"].pairs, policy.kinds["default"].pairs) == (len(pairs) - 1, 1)


def test_consistency_filter_dropping_everything_is_an_input_error(tmp_path, chunks_dir, base_model):
    chunks = contracts.read_chunks(chunks_dir)
    vague = Pair(query_id="v", query="Zebra marmalade orbits the quiet violin on Tuesdays.",
                 positive_chunk_ids=[chunks[0].chunk_id], split="train", source="offline/ict")
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [vague])
    with pytest.raises(InputError, match="consistency_rank"):
        mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "out", MineConfig(offline_consistency_rank=1), base_model=base_model)


def test_offline_pairs_get_no_hard_negatives_by_default(tmp_path, chunks_dir, train_pairs, base_model):
    """Default MineConfig: offline-generator pairs train on in-batch negatives only (their mined neighbours are
    mostly false negatives); the same queries from another source get num_negatives mined ones."""
    chunk_pairs = [p for p in train_pairs if p.relevance == "chunk"][:6]
    human = [p.model_copy(update={"query_id": f"h{i}", "query": p.query + " (asked by a person)", "source": "byo"})
             for i, p in enumerate(chunk_pairs)]
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [*chunk_pairs, *human])
    m = mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", MineConfig(offline_consistency_rank=0),
                 base_model=base_model)
    got = {r.anchor: r for r in contracts.read_train_examples(tmp_path / "mined")}
    assert all(got[p.query].negatives == [] for p in chunk_pairs)
    assert all(len(got[p.query].negatives) == 4 for p in human)
    assert m.counts["offline_examples"] == len(chunk_pairs) and m.counts["examples_short_of_negatives"] == 0
    # offline rows beside the user's pairs are augmentation rows (sdg.augment), marked in train.jsonl for train
    assert all(got[p.query].augment for p in chunk_pairs) and not any(got[p.query].augment for p in human)
    assert all(r.get("augment") is True for _, r in contracts.iter_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE)
               if r["anchor"] in {p.query for p in chunk_pairs})
    # the policies applied, with what each made, are recorded for train; the user's pairs decide WiSE-FT
    policy = m.result.policy
    n = len(chunk_pairs)
    assert policy.kinds == {
        "offline": AppliedPolicy(num_negatives=0, consistency_rank=0, base_weight=0.5, pairs=n, examples=n),
        "default": AppliedPolicy(num_negatives=4, consistency_rank=0, base_weight=0.0, pairs=n, examples=n),
    }
    assert policy.base_weight() == 0.0
    most_offline = policy.model_copy(update={"kinds": {**policy.kinds, "offline": policy.kinds["offline"].model_copy(
        update={"examples": 3 * n})}})
    assert most_offline.base_weight() == 0.0  # augmentation rows never pull the user's fine-tuning back
    only_offline = policy.model_copy(update={"kinds": {"offline": policy.kinds["offline"]}})
    assert only_offline.base_weight() == 0.5
    # a run of generated pairs alone has no augmentation rows
    contracts.write_jsonl(tmp_path / "pairs_offline" / contracts.PAIRS_FILE, chunk_pairs)
    mine.run(chunks_dir, tmp_path / "pairs_offline", tmp_path / "mined_offline", MineConfig(offline_consistency_rank=0),
             base_model=base_model)
    assert not any(r.augment for r in contracts.read_train_examples(tmp_path / "mined_offline"))


def test_a_rewritten_positive_is_never_a_negative_of_a_query_judging_its_document(tmp_path, chunks_dir, train_pairs,
                                                                                base_model):
    """An inverse-cloze positive (its chunk minus the query sentence: ``positive_text``) is a near-copy of that chunk.
    A user's query that judges the chunk's document relevant must not have it as an in-batch negative: it is in
    that query's known positives, and the batch mask leaves it out of its softmax."""
    from embedforge.contracts.positives import known_positives
    from embedforge.stages.train.batching import collate

    ict = next(p for p in train_pairs if p.positive_text and p.positive_chunk_ids)
    doc = next(c.doc_id for c in contracts.read_chunks(chunks_dir) if c.chunk_id == ict.positive_chunk_ids[0])
    user = Pair(query_id="u1", query="a user question about this document", positive_doc_ids=[doc],
                relevance="document", split="train", source="byo")
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [ict, user])
    mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", MineConfig(offline_consistency_rank=0),
             base_model=base_model)
    rows = contracts.read_train_examples(tmp_path / "mined")
    known = known_positives(tmp_path / "mined", rows)
    assert ict.positive_text in known[user.query]
    batch = collate(rows, [0, 1], known)
    u = batch.anchors.index(user.query)
    assert batch.mask[u, batch.positives.index(ict.positive_text)]  # masked for the user's query
    assert not batch.mask[u, u]  # its own target never is


def test_the_model_section_decides_how_mine_embeds(chunks_dir, pairs_dir, mined_dir, base_model, tmp_path):
    """``model`` (here CLS pooling instead of MiniLM's mean) is how mine loads the base model: its saved chunk
    embeddings are that embedder's, not the folder default's."""
    from embedforge.config import ModelConfig
    from embedforge.retrieval.encode import encode, load_model

    cls = ModelConfig(pooling="cls")
    out = tmp_path / "mined_cls"
    mine.run(chunks_dir, pairs_dir, out, MineConfig(**MINE_AS_HUMAN), base_model=base_model, model_cfg=cls)
    got, ids = contracts.read_embeddings(out)
    texts = {c.chunk_id: c.text for c in contracts.read_chunks(chunks_dir)}
    want = encode(load_model(base_model, model=cls), [texts[i] for i in ids], kind="document")
    np.testing.assert_allclose(got, want, atol=1e-5)
    default, _ = contracts.read_embeddings(mined_dir)
    assert not np.allclose(got, default, atol=1e-3)

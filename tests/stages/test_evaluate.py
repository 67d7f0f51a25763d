"""Evaluate stage: metrics through the real code path (real model, real FAISS, BEIR/pytrec_eval), checked against
rankings constructed so the expected numbers are computable by hand; document-level aggregation; reuse of the
mine stage's base embeddings; external BEIR folders; and the component on the shared tiny-corpus artifacts."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from embedforge import contracts
from embedforge.config import EvaluateConfig
from embedforge.contracts import Chunk, Pair
from embedforge.errors import ConfigError, InputError
from embedforge.retrieval import beir, ranking
from embedforge.retrieval.encode import encode, load_model
from embedforge.sample_corpus import SAMPLE_CORPUS
from embedforge.stages import evaluate

CFG = EvaluateConfig()  # k = 1, 5, 10, 100


# ------------------------------------------------------------------------------------------------ helpers
def _paragraphs(topic: str, n: int) -> list[str]:
    text = (SAMPLE_CORPUS / f"{topic}.rst").read_text(encoding="utf-8")
    paras = [re.sub(r"\s+", " ", p).strip() for p in text.split("\n\n")]
    paras = [p for p in paras if len(p) > 40 and not set(p) <= set("*=-\" ")]
    assert len(paras) >= n, topic
    return paras[:n]


def _chunks(layout: dict[str, int], split: str = "eval") -> list[Chunk]:
    """Real-text chunks: ``{"while": 3}`` -> chunks while#0..while#2 from the sample corpus."""
    return [
        Chunk(chunk_id=f"{doc}#{i}", doc_id=doc, text=text, title=doc, position=i, split=split)
        for doc, n in layout.items()
        for i, text in enumerate(_paragraphs(doc, n))
    ]


def _designed(q: np.ndarray, cosines: list[float], seed: int = 0) -> np.ndarray:
    """Unit vectors whose inner products with the unit vector ``q`` are exactly ``cosines``."""
    rng = np.random.default_rng(seed)
    other = rng.normal(size=(len(cosines), q.shape[0]))
    other -= np.outer(other @ q, q)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    c = np.asarray(cosines, dtype=np.float64)[:, None]
    return np.ascontiguousarray(c * q + np.sqrt(1.0 - c**2) * other, dtype=np.float32)


def _single_relevant(rank: int, k: int) -> dict[str, float]:
    """Hand formulas for one relevant item at ``rank`` (1-based)."""
    hit = rank <= k
    return {
        f"ndcg@{k}": 1.0 / math.log2(rank + 1) if hit else 0.0,
        f"recall@{k}": 1.0 if hit else 0.0,
        f"precision@{k}": (1.0 if hit else 0.0) / k,
        f"mrr@{k}": 1.0 / rank if hit else 0.0,
        f"map@{k}": 1.0 / rank if hit else 0.0,
    }


@pytest.fixture(scope="module")
def base(base_model):
    return load_model(base_model)


QUERY = "how do I stop a loop before it is finished"


# ------------------------------------------------------------------------------------------------ metrics by hand
@pytest.mark.parametrize("rank", [1, 3, 12])
def test_metrics_for_a_known_rank_match_hand_formulas(base, rank):
    chunks = _chunks({"while": 4, "for": 4, "break": 2, "continue": 2})  # 12 chunks
    pos = chunks[5].chunk_id
    q = encode(base, [QUERY], kind="query")[0]
    # Cosines 0.9, 0.85, ... in corpus order, then the positive is moved to position `rank`.
    cosines = [0.9 - 0.05 * i for i in range(len(chunks))]
    order = [c.chunk_id for c in chunks if c.chunk_id != pos]
    order.insert(rank - 1, pos)
    by_id = dict(zip(order, cosines))
    emb = _designed(q, [by_id[c.chunk_id] for c in chunks])
    pair = Pair(query_id="q1", query=QUERY, positive_chunk_ids=[pos], split="eval")

    got = ranking.evaluate_model(base, chunks, [pair], CFG, chunk_embeddings=emb)

    assert set(got) == {f"{m}@{k}" for m in ranking.METRIC_NAMES for k in CFG.all_k}
    for k in CFG.all_k:
        for name, value in _single_relevant(rank, k).items():
            assert got[name] == pytest.approx(value, abs=1e-5), name


def test_two_positives_at_ranks_2_and_5(base):
    chunks = _chunks({"while": 4, "for": 4, "break": 2})
    q = encode(base, [QUERY], kind="query")[0]
    emb = _designed(q, [0.9 - 0.05 * i for i in range(len(chunks))])  # rank = corpus position + 1
    pair = Pair(query_id="q", query=QUERY, positive_chunk_ids=[chunks[1].chunk_id, chunks[4].chunk_id], split="eval")
    got = ranking.evaluate_model(base, chunks, [pair], EvaluateConfig(k_values=[1, 5]), chunk_embeddings=emb)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3)
    assert got["ndcg@1"] == 0.0 and got["recall@1"] == 0.0 and got["mrr@1"] == 0.0
    assert got["ndcg@5"] == pytest.approx(dcg / idcg, abs=1e-5)
    assert got["map@5"] == pytest.approx((1 / 2 + 2 / 5) / 2, abs=1e-5)
    assert got["mrr@5"] == pytest.approx(0.5, abs=1e-5)
    assert got["recall@5"] == 1.0 and got["precision@5"] == pytest.approx(0.4)


def test_real_encoding_perfect_ranking(base):
    """Without designed embeddings: a query identical to its chunk's text (base model, no prompts) ranks it first."""
    chunks = _chunks({"while": 3, "for": 3, "import": 3, "lambda": 2})
    pairs = [Pair(query_id=f"q{i}", query=c.text, positive_chunk_ids=[c.chunk_id], split="eval")
             for i, c in enumerate(chunks[::2])]
    pairs.append(Pair(query_id="train-only", query="ignored", positive_chunk_ids=[chunks[0].chunk_id], split="train"))
    got = ranking.evaluate_model(base, chunks, pairs, CFG)
    for k in CFG.all_k:
        assert got[f"ndcg@{k}"] == got[f"recall@{k}"] == got[f"mrr@{k}"] == got[f"map@{k}"] == 1.0
        assert got[f"precision@{k}"] == pytest.approx(1 / k)


def test_a_query_without_results_counts_as_zero():
    got = ranking.retrieval_metrics({"a": {"x": 1}, "b": {"y": 1}}, {"a": {"x": 0.9}, "b": {}}, [1, 10])
    assert got["ndcg@10"] == got["mrr@10"] == got["recall@1"] == 0.5  # averaged over both queries, not just "a"
    with pytest.raises(ValueError, match="no results"):
        ranking.retrieval_metrics({"a": {"x": 1}}, {}, [1])


def test_per_query_scores_match_hand_formulas_and_average_to_the_metrics():
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"u": 1, "v": 1}}
    results = {"a": {"z": 0.9, "x": 0.8, "w": 0.1}, "b": {}, "c": {"v": 0.7, "q": 0.6, "u": 0.5}}
    got = evaluate.per_query_metrics(qrels, results, [1, 10])

    for k in (1, 10):
        for name, value in _single_relevant(2, k).items():
            assert got["a"][name] == pytest.approx(value, abs=1e-6), name
        assert all(v == 0.0 for v in got["b"].values())  # no result: zero, not skipped
    assert got["c"]["recall@1"] == 0.5 and got["c"]["map@10"] == pytest.approx((1 + 2 / 3) / 2)
    mean = ranking.retrieval_metrics(qrels, results, [1, 10])
    assert set(got["c"]) == set(mean)
    for name, value in mean.items():
        assert np.mean([got[q][name] for q in qrels]) == pytest.approx(value, abs=6e-6), name


# ------------------------------------------------------------------------------------------------ document level
def test_document_scores_as_its_best_chunk(base):
    chunks = _chunks({"while": 3, "for": 1, "break": 1, "continue": 1})
    cos = {"for#0": 0.9, "while#2": 0.8, "break#0": 0.7, "while#0": 0.6, "while#1": 0.5, "continue#0": 0.4}
    q = encode(base, [QUERY], kind="query")[0]
    emb = _designed(q, [cos[c.chunk_id] for c in chunks])

    results = ranking.retrieve(emb, chunks, q[None, :], ["d"], max_k=10, document_level={"d"})
    assert list(results["d"]) == ["for", "while", "break", "continue"]  # one entry per document, best first
    assert results["d"]["while"] == pytest.approx(0.8, abs=1e-5)  # its best chunk, not the first or the mean

    doc_pair = Pair(query_id="d", query=QUERY, positive_doc_ids=["while"], relevance="document", split="eval")
    got = ranking.evaluate_model(base, chunks, [doc_pair], CFG, chunk_embeddings=emb)
    for name, value in _single_relevant(2, 10).items():
        assert got[name] == pytest.approx(value, abs=1e-5)
    assert got["precision@5"] == pytest.approx(1 / 5)

    # The same positive judged on one chunk (while#0, 4th chunk) is a different, lower score.
    chunk_pair = Pair(query_id="c", query=QUERY, positive_chunk_ids=["while#0"], split="eval")
    got_chunk = ranking.evaluate_model(base, chunks, [chunk_pair], CFG, chunk_embeddings=emb)
    assert got_chunk["mrr@10"] == pytest.approx(1 / 4, abs=1e-5)


def test_excluded_source_chunk_is_never_ranked(base):
    """An inverse-cloze eval query masks the chunk it was cut from: its document must win on its other chunks."""
    chunks = _chunks({"while": 3, "for": 1, "break": 1, "continue": 1})
    cos = {"while#2": 0.95, "for#0": 0.9, "break#0": 0.7, "while#0": 0.6, "while#1": 0.5, "continue#0": 0.4}
    q = encode(base, [QUERY], kind="query")[0]
    emb = _designed(q, [cos[c.chunk_id] for c in chunks])

    res = ranking.retrieve(emb, chunks, np.stack([q, q]), ["d", "c"], max_k=10, document_level={"d"},
                            exclude={"d": {"while#2"}, "c": {"while#2"}})
    assert list(res["d"]) == ["for", "break", "while", "continue"]
    assert res["d"]["while"] == pytest.approx(0.6, abs=1e-5)  # the best *remaining* chunk of the document
    assert "while#2" not in res["c"] and list(res["c"])[0] == "for#0"

    masked = Pair(query_id="m", query=QUERY, positive_doc_ids=["while"], relevance="document", split="eval",
                  exclude_chunk_ids=["while#2"])
    got = ranking.evaluate_model(base, chunks, [masked], CFG, chunk_embeddings=emb)
    assert got["mrr@10"] == pytest.approx(1 / 3, abs=1e-5)  # without the mask it would be 1.0


def test_document_level_widens_the_search_until_k_documents():
    """50 chunks of one document outrank everything: the first search window holds one document only."""
    dim, rng = 16, np.random.default_rng(3)
    q = rng.normal(size=dim)
    q /= np.linalg.norm(q)
    chunks = [Chunk(chunk_id=f"big#{i}", doc_id="big", text="x", position=i, split="train") for i in range(50)]
    chunks += [Chunk(chunk_id=f"d{i}#0", doc_id=f"d{i}", text="x", position=0, split="train") for i in range(5)]
    cosines = [0.95 - 0.001 * i for i in range(50)] + [0.5, 0.4, 0.3, 0.2, 0.1]
    emb = _designed(q, cosines)
    res = ranking.retrieve(emb, chunks, q[None, :].astype(np.float32), ["q"], max_k=3, document_level={"q"})
    assert list(res["q"]) == ["big", "d0", "d1"]
    assert res["q"]["d1"] == pytest.approx(0.4, abs=1e-5)


def test_beir_split_expands_document_positives(tmp_path):
    chunks = _chunks({"while": 3, "for": 1})
    pairs = [Pair(query_id="d", query="loops", positive_doc_ids=["while"], relevance="document", split="eval"),
             Pair(query_id="c", query="for loops", positive_chunk_ids=["for#0"], split="eval")]
    eval_set = ranking.build_eval_set(chunks, pairs)
    folder = beir.write_beir_split(tmp_path / "beir", chunks, eval_set)
    rows = (folder / "qrels" / "test.tsv").read_text().splitlines()
    assert rows == ["query-id\tcorpus-id\tscore", "d\twhile#0\t1", "d\twhile#1\t1", "d\twhile#2\t1", "c\tfor#0\t1"]
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    assert [c["_id"] for c in corpus] == [c.chunk_id for c in chunks] and corpus[0]["text"] == chunks[0].text
    # A standard BEIR loader reads the layout back.
    from beir.datasets.data_loader import GenericDataLoader

    corpus_b, queries_b, qrels_b = GenericDataLoader(str(folder)).load(split="test")
    assert len(corpus_b) == len(chunks) and queries_b == {"d": "loops", "c": "for loops"}
    assert qrels_b["d"] == {"while#0": 1, "while#1": 1, "while#2": 1}


# ------------------------------------------------------------------------------------------------ reuse
def test_read_embeddings_reorders_and_rejects_mismatches(tmp_path):
    chunks = _chunks({"while": 2, "for": 2}, split="train")
    ids = [c.chunk_id for c in chunks]
    emb = _designed(np.eye(8)[0], [0.1, 0.2, 0.3, 0.4])
    folder = tmp_path / "mined"
    folder.mkdir()
    np.save(folder / contracts.EMBEDDINGS_FILE, emb[::-1].copy())
    contracts.write_json(folder / contracts.EMBEDDING_IDS_FILE, ids[::-1])
    got, got_ids = contracts.read_embeddings(folder, ids, 8)
    np.testing.assert_array_equal(got, emb)  # reordered to chunks
    assert got_ids == ids

    with pytest.raises(InputError, match="not 16"):
        contracts.read_embeddings(folder, ids, 16)  # wrong dimension
    with pytest.raises(InputError, match="lacks 1 of 5 chunks"):
        contracts.read_embeddings(folder, ids + ["break#0"], 8)  # a chunk without an embedding
    with pytest.raises(InputError, match="does not exist"):
        contracts.read_embeddings(tmp_path, ids, 8)  # no files


@pytest.fixture(scope="module")
def fixture_data(chunks_dir, pairs_dir):
    return contracts.read_chunks(chunks_dir), contracts.read_pairs(pairs_dir)


@pytest.fixture(scope="module")
def base_reencoded(base, fixture_data):
    chunks, pairs = fixture_data
    return ranking.evaluate_model(base, chunks, pairs, CFG)


def test_reusing_mined_embeddings_gives_the_same_base_metrics(base, fixture_data, mined_dir, base_reencoded):
    chunks, pairs = fixture_data
    reused, _ = contracts.read_embeddings(mined_dir, [c.chunk_id for c in chunks], 384)
    got = ranking.evaluate_model(base, chunks, pairs, CFG, chunk_embeddings=reused)
    assert got == pytest.approx(base_reencoded, abs=1e-5)


# ------------------------------------------------------------------------------------------------ external BEIR
def _beir_folder(root: Path) -> Path:
    """A tiny real-text BEIR collection with an ArguAna-style query (its own id and an identical text in corpus)."""
    docs = {f"{t}-{i}": p for t in ("while", "import", "lambda", "global") for i, p in enumerate(_paragraphs(t, 2))}
    arg = _paragraphs("raise", 2)[1]
    docs["arg"] = arg  # the query's own id, same text
    docs["arg-copy"] = arg  # another id, same text
    docs["arg-counter"] = arg + " Therefore the opposite conclusion holds."  # the relevant counter-argument
    root.mkdir(parents=True)
    contracts.write_jsonl(root / "corpus.jsonl", [{"_id": d, "title": "", "text": t} for d, t in docs.items()])
    contracts.write_jsonl(root / "queries.jsonl", [{"_id": "arg", "text": arg},
                                                  {"_id": "imp", "text": "how are modules imported"},
                                                  {"_id": "unjudged", "text": "nothing"}])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\narg\targ-counter\t1\nimp\timport-0\t1\nimp\timport-1\t1\n"
        "imp\tno-such-doc\t1\nghost\twhile-0\t1\n")
    return root


def test_external_beir_folder_ignores_identical_ids_and_texts(base, tmp_path, caplog):
    folder = _beir_folder(tmp_path / "ext")
    with caplog.at_level(logging.WARNING, logger="embedforge.stages.evaluate"):
        coll = beir.load_beir_folder(folder)
    assert "no-such-doc" in caplog.text and "ghost" in caplog.text  # unknown ids: warned and dropped
    assert set(coll.qrels) == {"arg", "imp"} and coll.qrels["imp"] == {"import-0": 1, "import-1": 1}

    arg_only = beir.BeirCollection(coll.path, coll.corpus, {"arg": coll.queries["arg"]},
                                       {"arg": coll.qrels["arg"]})
    kept = beir.evaluate_beir_folder(base, arg_only, CFG, ignore_identical=False)
    dropped = beir.evaluate_beir_folder(base, arg_only, CFG)
    assert kept["mrr@10"] == pytest.approx(1 / 3, abs=1e-5)  # behind its own text under its id and a copy
    assert dropped["mrr@10"] == 1.0 and dropped["ndcg@1"] == 1.0

    both = beir.evaluate_beir_folder(base, folder, CFG)
    assert 0.5 < both["ndcg@10"] <= 1.0 and both["recall@100"] == 1.0

    # Cranfield-style id clash: query "imp" and a relevant document "imp" are unrelated namespaces -> kept.
    clash = beir.BeirCollection(coll.path, {**coll.corpus, "imp": {"title": "", "text": coll.corpus["import-0"]["text"]}},
                                    {"imp": coll.queries["imp"]}, {"imp": {"imp": 1}})
    assert beir.evaluate_beir_folder(base, clash, CFG)["recall@100"] == 1.0


def test_beir_document_text_joins_title_like_beir():
    assert beir.beir_document_text({"title": "Loops", "text": "while runs code."}) == "Loops while runs code."
    assert beir.beir_document_text({"title": "", "text": " body "}) == "body"


def test_bad_beir_folders_name_the_file(tmp_path):
    folder = _beir_folder(tmp_path / "a")
    (folder / "qrels" / "test.tsv").rename(folder / "qrels" / "dev.tsv")
    with pytest.raises(InputError, match=r"qrels/test\.tsv"):
        beir.load_beir_folder(folder)
    assert set(beir.load_beir_folder(folder, split="dev").qrels) == {"arg", "imp"}

    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nghost\tnope\t1\n")
    with pytest.raises(InputError, match=r"test\.tsv: no judged query"):
        beir.load_beir_folder(folder)

    (folder / "corpus.jsonl").write_text('{"_id": "a", "text": "fine"}\nnot json\n')
    with pytest.raises(InputError, match=r"corpus\.jsonl:2"):
        beir.load_beir_folder(folder, split="dev")

    (folder / "queries.jsonl").unlink()
    with pytest.raises(InputError, match=r"queries\.jsonl"):
        beir.load_beir_folder(folder, split="dev")
    with pytest.raises(InputError, match="does not exist"):
        beir.load_beir_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ stage errors
def test_no_eval_pairs_says_what_to_change(tmp_path, base_model):
    chunks = _chunks({"while": 2, "for": 2}, split="train")
    contracts.write_jsonl(tmp_path / "chunks" / contracts.CHUNKS_FILE, chunks)
    pairs = [Pair(query_id="q", query="loops", positive_chunk_ids=["while#0"], split="train")]
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, pairs)
    with pytest.raises(InputError, match=r"none in the 'eval' split.*ingest\.eval_fraction"):
        evaluate.run(tmp_path / "chunks", tmp_path / "pairs", base_model, tmp_path, tmp_path / "out", CFG)

    chunks[0] = chunks[0].model_copy(update={"split": "eval"})
    contracts.write_jsonl(tmp_path / "chunks" / contracts.CHUNKS_FILE, chunks)
    with pytest.raises(InputError, match=r"1 chunks are held out.*eval pairs"):
        evaluate.run(tmp_path / "chunks", tmp_path / "pairs", base_model, tmp_path, tmp_path / "out", CFG)
    with pytest.raises(ConfigError, match="primary_metric"):
        evaluate.run(tmp_path / "chunks", tmp_path / "pairs", base_model, tmp_path, tmp_path / "out",
                     EvaluateConfig(k_values=[1, 5]))
    assert not (tmp_path / "out" / contracts.MANIFEST).exists()


# ------------------------------------------------------------------------------------------------ component
def test_component_on_the_shared_artifacts(tmp_path, chunks_dir, pairs_dir, mined_dir, model_dir, base_model,
                                           fixture_data, base_reencoded):
    from embedforge.components.evaluate.component import evaluate as component
    from kfp import dsl

    ext = _beir_folder(tmp_path / "ext")
    evaluation = dsl.Artifact(uri=str(tmp_path / "evaluation"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    component.python_func(
        chunks=dsl.Dataset(uri=str(chunks_dir)), pairs=dsl.Dataset(uri=str(pairs_dir)),
        mined=dsl.Dataset(uri=str(mined_dir)), model=dsl.Model(uri=str(model_dir)), base_model=base_model,
        eval_beir=str(ext), config={}, evaluation=evaluation, metrics=metrics,
    )
    out = Path(evaluation.path)
    result = json.loads((out / contracts.EVALUATION_FILE).read_text())
    chunks, pairs = fixture_data
    n_eval = len({p.query_id for p in pairs if p.split == "eval"})

    assert result["primary_metric"] == "ndcg@10"
    assert result["counts"]["eval_queries"] == n_eval > 0 and result["counts"]["corpus_chunks"] == len(chunks)
    assert result["reused_base_embeddings"] is True
    assert result["base"] == pytest.approx(base_reencoded, abs=1e-5)  # reuse == re-encoding
    for k, v in result["delta"].items():
        assert v == pytest.approx(result["finetuned"][k] - result["base"][k], abs=2e-5)
    assert result["models"]["finetuned"] == str(model_dir)
    assert set(result["external"]) >= {"path", "base", "finetuned"} and result["external"]["counts"]["queries"] == 2
    assert 0.0 <= result["finetuned"]["ndcg@10"] <= 1.0

    # The fine-tuned model's numbers are what the gate's champion re-evaluation gives for it, overall and per query.
    from embedforge.stages.gate import evaluate_champion

    ft = evaluate_champion(model_dir, chunks_dir, pairs_dir, CFG)
    assert result["finetuned"] == pytest.approx(ft.metrics, abs=1e-5)

    qrels = (out / contracts.BEIR_DIR / "qrels" / "test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and {r.split("\t")[0] for r in qrels[1:]} <= {p.query_id for p in pairs}
    assert (out / contracts.BEIR_DIR / "corpus.jsonl").read_text().count("\n") == len(chunks)
    m = contracts.read_manifest(out)
    assert m.stage == "evaluate" and m.counts["eval_queries"] == n_eval and "base_embeddings" in m.inputs

    # per_query.jsonl: one record per eval query whose scores average to evaluation.json's, with both rankings.
    per_query = contracts.read_per_query(out)
    assert sorted(r.query_id for r in per_query) == sorted({p.query_id for p in pairs if p.split == "eval"})
    for who in ("base", "finetuned"):
        for name, value in result[who].items():
            assert np.mean([getattr(r, who)[name] for r in per_query]) == pytest.approx(value, abs=2e-5), (who, name)
    ids = {"chunk": {c.chunk_id for c in chunks}, "document": {c.doc_id for c in chunks}}
    assert {r.relevance for r in per_query} == {"chunk", "document"}  # offline pairs: chunk and title queries
    for r in per_query:
        for hits in (r.base_ranking, r.finetuned_ranking):
            assert len(hits) == evaluate.RANKING_DEPTH and {h.id for h in hits} <= ids[r.relevance]
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        hit_at_1 = r.finetuned_ranking[0].id in r.relevant
        assert r.finetuned["recall@1"] == pytest.approx(float(hit_at_1) / len(r.relevant))
        assert r.finetuned == pytest.approx(ft.per_query[r.query_id], abs=1e-5)  # query by query, as the gate pairs

    # external_per_query.jsonl: the same records for the external collection's judged queries (per document)
    external = contracts.read_per_query(out, external=True)
    assert len(external) == result["external"]["counts"]["queries"] and {r.relevance for r in external} == {"document"}
    for who in ("base", "finetuned"):
        for name, value in result["external"][who].items():
            assert np.mean([getattr(r, who)[name] for r in external]) == pytest.approx(value, abs=2e-5), (who, name)
    for r in external:
        assert r.relevant and r.query and r.base_ranking and r.source == "" and r.query_type is None

    md = metrics.metadata
    assert md["finetuned_ndcg_at_10"] == result["finetuned"]["ndcg@10"]
    assert md["base_mrr_at_100"] == result["base"]["mrr@100"]
    assert md["delta_recall_at_5"] == result["delta"]["recall@5"]
    assert "external_finetuned_ndcg_at_10" in md and md["eval_queries"] == n_eval
    assert all(re.match(r"^[a-zA-Z]([-_a-zA-Z0-9]{0,62}[a-zA-Z0-9])?$", name) for name in md)


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_cranfield_matches_beirs_own_exact_search(shared_data, base, base_model):
    """Our exact search + metrics on cranfield (1,400 docs, 75 test queries) agree with BEIR's own pipeline."""
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    folder = shared_data / "cranfield"
    ours = beir.evaluate_beir_folder(base, folder, CFG)
    assert 0.2 < ours["ndcg@10"] < 0.6  # BM25 reference: 0.328 on all queries

    coll = beir.load_beir_folder(folder)
    dres = DenseRetrievalExactSearch(models.SentenceBERT(base_model, device="cpu"), batch_size=32)
    results = EvaluateRetrieval(dres, k_values=CFG.all_k, score_function="cos_sim").retrieve(coll.corpus, coll.queries)
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(coll.qrels, results, CFG.all_k)
    for k in CFG.all_k:
        assert ours[f"ndcg@{k}"] == pytest.approx(ndcg[f"NDCG@{k}"], abs=2e-3)
        assert ours[f"recall@{k}"] == pytest.approx(recall[f"Recall@{k}"], abs=2e-3)
        assert ours[f"map@{k}"] == pytest.approx(_map[f"MAP@{k}"], abs=2e-3)


def test_the_model_section_decides_how_the_base_model_is_scored(chunks_dir, pairs_dir, base_model, base_reencoded,
                                                                 fixture_data, tmp_path):
    """``model`` reaches evaluate's base model as it reached mine's: with CLS pooling, the base metrics are the
    CLS embedder's (and mine's CLS embeddings are reused for them), not the folder default's."""
    from conftest import MINE_AS_HUMAN

    from embedforge.config import MineConfig, ModelConfig
    from embedforge.stages import mine

    cls = ModelConfig(pooling="cls")
    mined = tmp_path / "mined_cls"
    mine.run(chunks_dir, pairs_dir, mined, MineConfig(**MINE_AS_HUMAN), base_model=base_model, model_cfg=cls)
    result = evaluate.run(chunks_dir, pairs_dir, base_model, base_model, tmp_path / "eval", CFG,
                          base_embeddings_dir=mined, model_cfg=cls).result
    chunks, pairs = fixture_data
    want = ranking.evaluate_model(load_model(base_model, model=cls), chunks, pairs, CFG)
    assert result.base == pytest.approx(want, abs=1e-5)
    assert result.base != pytest.approx(base_reencoded, abs=1e-3)


def test_matryoshka_dims_are_scored_on_slices_of_one_encoding(tmp_path, chunks_dir, pairs_dir, model_dir, base_model,
                                                              fixture_data, base_reencoded):
    """A model recorded as trained with Matryoshka dimensions: evaluation.json's ``by_dimension`` holds both models'
    metrics at each, equal to sentence-transformers' own ``truncate_dim`` encoding (slice, then normalise) at that
    width, and the full width's equal ``base``/``finetuned``."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from embedforge.retrieval.dimensions import record_trained_dims

    mrl = tmp_path / "mrl_model"
    shutil.copytree(model_dir, mrl)
    record_trained_dims(mrl, [384, 128, 64])
    out = tmp_path / "eval"
    result = evaluate.run(chunks_dir, pairs_dir, base_model, mrl, out, CFG).result
    on_disk = json.loads((out / contracts.EVALUATION_FILE).read_text())["by_dimension"]
    assert sorted(on_disk, key=int) == ["64", "128", "384"]
    assert set(result.by_dimension) == {384, 128, 64}
    assert result.by_dimension[384] == {"base": result.base, "finetuned": result.finetuned}
    chunks, pairs = fixture_data
    for dim in (128, 64):
        want_ft = ranking.evaluate_model(SentenceTransformer(str(mrl), device="cpu", truncate_dim=dim), chunks, pairs, CFG)
        want_base = ranking.evaluate_model(SentenceTransformer(base_model, device="cpu", truncate_dim=dim), chunks, pairs,
                                           CFG)
        assert result.by_dimension[dim]["finetuned"] == pytest.approx(want_ft, abs=1e-4)
        assert result.by_dimension[dim]["base"] == pytest.approx(want_base, abs=1e-4)
    # a model without recorded dimensions: no by_dimension
    assert evaluate.run(chunks_dir, pairs_dir, base_model, model_dir, tmp_path / "plain", CFG).result.by_dimension == {}

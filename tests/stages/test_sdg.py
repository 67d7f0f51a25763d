"""SDG on real chunks: the offline generator (inverse cloze + titles), bring-your-own pairs, BEIR qrels helper."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from embedforge.config import SdgConfig
from embedforge.contracts import (
    PAIRS_FILE,
    Chunk,
    read_chunks,
    read_manifest,
    read_pairs,
    write_jsonl,
)
from embedforge.errors import InputError
from embedforge.retrieval.text import normalize_ws, query_key, split_segments
from embedforge.stages import sdg
from embedforge.stages.sdg.augment import augment_pairs
from embedforge.stages.sdg.byo import load_pairs, pairs_from_beir_qrels
from embedforge.stages.sdg.offline import OfflineGenerator, meaningful_title


def _run(chunks_dir, tmp_path, name="pairs", pairs_file=None, **cfg):
    out = tmp_path / name
    manifest = sdg.run(chunks_dir, out, SdgConfig(**cfg), pairs_file=pairs_file)
    return manifest, read_pairs(out)


# ------------------------------------------------------------------------------------------- offline generator
def test_offline_pairs_on_tiny_corpus(chunks_dir, pairs_dir):
    chunks = {c.chunk_id: c for c in read_chunks(chunks_dir)}
    doc_split = {c.doc_id: c.split for c in chunks.values()}
    pairs = read_pairs(pairs_dir)
    m = read_manifest(pairs_dir)
    assert m.stage == "sdg" and m.counts["pairs"] == len(pairs)
    assert m.counts["train_pairs"] > 0 and m.counts["eval_pairs"] >= 5
    assert m.counts["source_offline_ict"] + m.counts["source_offline_title"] == len(pairs)
    assert m.counts["gen_chunks_seen"] == len(chunks)  # generator.stats() lands in the manifest

    assert len({p.query_id for p in pairs}) == len(pairs)
    keys = Counter((p.split, query_key(p.query)) for p in pairs)
    assert max(keys.values()) == 1  # unique queries
    removed = titles_stripped = 0
    for p in pairs:
        if p.source == "offline/ict":
            if p.meta["source_chunk_masked"]:  # eval, multi-chunk document: find the doc without its source chunk
                (cid,) = p.exclude_chunk_ids
                chunk = chunks[cid]
                assert p.split == "eval" and p.relevance == "document" and p.positive_chunk_ids == []
                assert sum(c.doc_id == chunk.doc_id for c in chunks.values()) > 1
            else:
                (cid,) = p.positive_chunk_ids
                chunk = chunks[cid]
                assert p.relevance == "chunk" and p.exclude_chunk_ids == []
                assert p.split == "train" or sum(c.doc_id == chunk.doc_id for c in chunks.values()) == 1
            assert p.positive_doc_ids == [chunk.doc_id] and p.split == chunk.split
            sentences = [s.text for s in split_segments(chunk.text) if s.kind == "prose"]
            assert p.query in sentences and len(p.query.split()) >= 4  # a real sentence of its chunk
            if p.split == "eval":
                assert p.positive_text is None  # eval positives are the corpus chunks themselves
            elif p.positive_text is not None:
                removed += 1
                assert p.query not in p.positive_text and len(p.positive_text) < len(chunk.text)
                assert p.meta["sentence_removed"] is True
        else:
            (doc,) = p.positive_doc_ids
            assert p.source == "offline/title" and p.split == doc_split[doc] and p.query == chunks[f"{doc}#0"].title
            if p.meta.get("title_removed_from_positive"):  # the document repeats its title: cut out of the positive
                (cid,) = p.positive_chunk_ids
                assert p.split == "train" and p.relevance == "chunk" and chunks[cid].doc_id == doc
                segs = [query_key(s.text) for s in split_segments(chunks[cid].text)]
                assert query_key(p.query) in segs
                assert query_key(p.query) not in [query_key(s.text) for s in split_segments(p.positive_text)]
                titles_stripped += 1
            else:
                assert p.relevance == "document" and p.positive_chunk_ids == [] and p.positive_text is None
    train_ict = sum(1 for p in pairs if p.source == "offline/ict" and p.split == "train")
    assert removed == train_ict > 0  # ict_remove_prob=1.0: every training positive loses its query sentence
    assert m.counts["gen_ict_positive_removed"] == removed
    assert titles_stripped > 0 and m.counts["gen_title_stripped"] == titles_stripped
    assert any(p.source == "offline/title" and p.relevance == "document" for p in pairs)  # eval titles stay whole


def test_deterministic_and_independent_of_other_documents(chunks_dir, pairs_dir, tmp_path):
    _run(chunks_dir, tmp_path)
    assert (tmp_path / "pairs" / PAIRS_FILE).read_bytes() == (pairs_dir / PAIRS_FILE).read_bytes()
    # a document's pairs depend only on the document and the seed (no shared random stream)
    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train"]
    full = OfflineGenerator(SdgConfig()).generate(chunks, "train")
    keep = sorted({c.doc_id for c in chunks})[::2]
    half = OfflineGenerator(SdgConfig()).generate([c for c in chunks if c.doc_id in keep], "train")
    by_id = {p.query_id: p for p in full}
    assert half and all(by_id[p.query_id] == p for p in half)
    other_seed = OfflineGenerator(SdgConfig(seed=99)).generate(chunks, "train")
    assert [p.query for p in other_seed] != [p.query for p in full]


def test_max_pairs_is_spread_over_documents_and_splits(chunks_dir, tmp_path):
    m, pairs = _run(chunks_dir, tmp_path, max_pairs=20)
    assert len(pairs) == 20 and m.counts["eval_pairs"] >= 1
    assert len({d for p in pairs for d in p.positive_doc_ids}) >= 14  # round-robin, not the first few documents
    assert m.counts["gen_pairs_over_cap_dropped"] > 0


def test_generator_knobs(chunks_dir, tmp_path):
    _, pairs = _run(chunks_dir, tmp_path, "a", title_queries=False, ict_remove_prob=0.0)
    assert pairs and all(p.source == "offline/ict" and p.positive_text is None for p in pairs)
    _, pairs = _run(chunks_dir, tmp_path, "b", queries_per_chunk=0)
    assert pairs and all(p.source == "offline/title" for p in pairs)
    assert any(p.positive_text for p in pairs)
    _, pairs = _run(chunks_dir, tmp_path, "b2", queries_per_chunk=0, title_strip=False)
    assert pairs and all(p.relevance == "document" and p.positive_text is None for p in pairs)
    _, pairs = _run(chunks_dir, tmp_path, "c", title_queries=False, ict_remove_prob=1.0, queries_per_chunk=3)
    per_chunk = Counter((p.positive_chunk_ids or p.exclude_chunk_ids)[0] for p in pairs)
    assert max(per_chunk.values()) == 3
    assert all(p.positive_text is not None for p in pairs if p.split == "train")
    _, pairs = _run(chunks_dir, tmp_path, "d", title_queries=False, min_query_words=25)
    assert all(len(p.query.split()) >= 25 for p in pairs)


def test_make_generator_builds_the_configured_generator():
    from embedforge.stages.sdg.llm import LlmGenerator

    assert isinstance(sdg.make_generator(SdgConfig()), OfflineGenerator)
    assert isinstance(sdg.make_generator(SdgConfig(generator="llm")), LlmGenerator)


def test_no_import_cycle_inside_sdg():
    """Every import of the sdg package, at module or function level (TYPE_CHECKING ones too), forms a DAG."""
    import ast
    import graphlib

    root = Path(sdg.__file__).parent
    mods = {}
    for path in root.rglob("*.py"):
        parts = ["embedforge", "stages", *path.relative_to(root.parent).with_suffix("").parts]
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[mod].update(n for n in names if n in mods and n != mod)
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle in embedforge.stages.sdg: {' -> '.join(exc.args[1])}")
    assert len(order) == len(mods) >= 10
    assert "embedforge.stages.sdg.llm" in graph["embedforge.stages.sdg"]  # function-level imports are seen (the factory's)


def test_meaningful_title():
    assert meaningful_title('The "assert" statement', "assert.rst", "body text")
    assert not meaningful_title("install_guide.md", "install_guide.md", "body")  # file-name-like
    assert not meaningful_title("README", "README.md", "body")  # one word
    assert not meaningful_title("install guide", "install-guide.md", "body")  # just the file stem
    assert not meaningful_title("Short note here", "a.txt", "short  note HERE")  # the whole text
    assert not meaningful_title("", "a.txt", "x")


def test_cross_split_duplicate_queries_dropped(tmp_path):
    shared = "The flux capacitor needs exactly one point twenty one gigawatts."
    chunks = [
        Chunk(chunk_id="a#0", doc_id="a", text=f"{shared} It was built in a garage in the valley.", position=0, split="train"),
        Chunk(chunk_id="b#0", doc_id="b", text=f"{shared} Nobody believed the inventor at first.", position=0, split="eval"),
    ]
    cdir = tmp_path / "chunks"
    write_jsonl(cdir / "chunks.jsonl", chunks)
    m, pairs = _run(cdir, tmp_path, title_queries=False, queries_per_chunk=2)
    queries = Counter(p.query for p in pairs)
    assert queries[shared] == 1 and m.counts["gen_cross_split_duplicate_queries_dropped"] == 1


# ------------------------------------------------------------------------------------------------------- BYO
@pytest.fixture(scope="module")
def corpus_views(chunks_dir):
    chunks = read_chunks(chunks_dir)
    train_doc = next(c.doc_id for c in chunks if c.split == "train")
    eval_doc = next(c.doc_id for c in chunks if c.split == "eval")
    multi = next(d for d in dict.fromkeys(c.doc_id for c in chunks) if sum(c.doc_id == d for c in chunks) >= 2
                 and chunks[[c.doc_id for c in chunks].index(d)].split == "train")
    return chunks, train_doc, eval_doc, multi


def _pairs_file(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_byo_resolution_and_split(chunks_dir, tmp_path, corpus_views):
    chunks, train_doc, eval_doc, multi = corpus_views
    chunk = next(c for c in chunks if c.doc_id == train_doc)
    multi_chunks = [c for c in chunks if c.doc_id == multi]
    whole_doc = "\n".join(c.text for c in multi_chunks)
    snippet = normalize_ws(multi_chunks[1].text)[5:80]
    rows = [
        {"query": "ids of a train doc", "positive_ids": [train_doc]},
        {"query": "ids of both splits", "positive_ids": [train_doc, eval_doc], "query_id": "mixed"},
        {"query": "exact chunk text", "positives": ["  " + chunk.text.replace(" ", "\n ") + " "], "negatives": ["not it"]},
        {"query": "whole document text", "positives": [whole_doc]},
        {"query": "substring of a chunk", "positives": [snippet]},
        {"query": "nothing matches", "positives": ["this sentence is in no document of the corpus at all"]},
        {"query": "unknown id", "positive_ids": ["no/such/doc.rst", train_doc]},
        {"query": "numeric ids become strings", "positive_ids": [12345]},
    ]
    pf = _pairs_file(tmp_path / "mine.jsonl", rows)
    m, pairs = _run(chunks_dir, tmp_path, pairs_file=str(pf))
    p = {x.query: x for x in pairs}
    assert len(pairs) == 8 and m.counts["source_byo"] == 8

    a = p["ids of a train doc"]
    assert (a.relevance, a.positive_doc_ids, a.positive_chunk_ids, a.split) == ("document", [train_doc], [], "train")
    assert a.query_id == "byo:1" and p["ids of both splits"].query_id == "mixed"
    mixed = p["ids of both splits"]  # default "majority": a 1-1 tie goes to train, the eval document is dropped
    assert (mixed.split, mixed.positive_doc_ids, mixed.meta["dropped_eval_positives"]) == ("train", [train_doc], [eval_doc])

    c = p["exact chunk text"]
    assert (c.relevance, c.positive_chunk_ids, c.positive_doc_ids) == ("chunk", [chunk.chunk_id], [train_doc])
    assert c.negatives == ["not it"] and c.meta["resolved_by"] == ["exact_chunk"]

    d = p["whole document text"]
    assert (d.relevance, d.positive_doc_ids, d.meta["resolved_by"]) == ("document", [multi], ["exact_document"])

    s = p["substring of a chunk"]
    assert s.positive_chunk_ids == [multi_chunks[1].chunk_id] and s.meta["resolved_by"] == ["substring_chunk"]

    n = p["nothing matches"]
    assert n.positive_chunk_ids == [] and n.positive_doc_ids == [] and n.meta["unresolved"] == [rows[5]["positives"][0]]
    u = p["unknown id"]
    assert u.positive_doc_ids == [train_doc] and u.meta["unresolved"] == ["no/such/doc.rst"]
    assert p["numeric ids become strings"].meta["unresolved"] == ["12345"]
    assert m.counts["gen_unresolved_positives"] == 3 and m.counts["gen_pairs_with_unresolved"] == 3


def test_byo_split_policies(chunks_dir, corpus_views, tmp_path):
    chunks, train_doc, eval_doc, _ = corpus_views
    other_eval = next(c.doc_id for c in chunks if c.split == "eval" and c.doc_id != eval_doc)
    pf = _pairs_file(tmp_path / "p.jsonl", [
        {"query": "mostly eval", "positive_ids": [train_doc, eval_doc, other_eval]},
        {"query": "one each", "positive_ids": [train_doc, eval_doc]},
    ])
    (most, tie), stats = load_pairs(pf, chunks)  # majority
    assert (most.split, most.positive_doc_ids, most.meta["dropped_train_positives"]) == ("eval", [eval_doc, other_eval], [train_doc])
    assert (tie.split, tie.positive_doc_ids) == ("train", [train_doc])
    (most, tie), _ = load_pairs(pf, chunks, split_policy="any_eval")
    assert most.split == tie.split == "eval" and len(most.positive_doc_ids) == 3  # nothing dropped, no train leak


def test_byo_train_positives_policy(chunks_dir, corpus_views, tmp_path):
    chunks, train_doc, eval_doc, _ = corpus_views
    pf = _pairs_file(tmp_path / "p.jsonl", [
        {"query": "mixed", "positive_ids": [train_doc, eval_doc]},
        {"query": "eval only", "positive_ids": [eval_doc]},
    ])
    pairs, stats = load_pairs(pf, chunks, split_policy="train_positives")
    mixed, only = pairs
    assert (mixed.split, mixed.positive_doc_ids, mixed.meta["dropped_eval_positives"]) == ("train", [train_doc], [eval_doc])
    assert (only.split, only.positive_doc_ids) == ("eval", [eval_doc])
    assert stats["eval_positives_dropped_from_train_pairs"] == 1


def test_byo_duplicate_queries_are_merged(chunks_dir, corpus_views, tmp_path):
    """Lines sharing a query text (case/space-insensitive) become one pair: positives unioned, highest grade per
    positive, negatives unioned minus new positives; a merged pair spanning both splits follows byo_split."""
    chunks, train_doc, eval_doc, _ = corpus_views
    other_eval = next(c.doc_id for c in chunks if c.split == "eval" and c.doc_id != eval_doc)
    multi = next(c.doc_id for c in chunks if c.split == "train" and c.doc_id != train_doc)
    multi_text = next(c.text for c in chunks if c.doc_id == multi)
    pf = _pairs_file(tmp_path / "dups.jsonl", [
        {"query": "What does assert do?", "positive_ids": [train_doc], "relevance": {train_doc: 2},
         "negatives": ["an unrelated passage", multi_text]},
        {"query": "what is kept apart", "positive_ids": [train_doc]},
        {"query": "  what does ASSERT  do? ", "positive_ids": [multi, train_doc], "query_id": "dup",
         "negatives": ["an unrelated passage", "another one"]},
        {"query": "What does assert do?", "positives": [multi_text]},  # chunk of multi, grade 1
        {"query": "split query", "positive_ids": [train_doc]},
        {"query": "Split Query", "positive_ids": [eval_doc, other_eval], "relevance": {eval_doc: 2}},
    ])
    m, pairs = _run(chunks_dir, tmp_path, pairs_file=str(pf))
    assert [p.query_id for p in pairs] == ["byo:1", "byo:2", "byo:5"]  # first line's id and text, file order
    a, kept, split_q = pairs
    assert a.query == "What does assert do?" and a.relevance == "document"  # one line at document level -> all
    assert a.positive_doc_ids == [train_doc, multi] and a.positive_chunk_ids == []
    assert a.positive_grades == {train_doc: 2, multi: 1}  # highest grade of train_doc kept (line 3 says 1)
    assert a.negatives == ["an unrelated passage", "another one"]  # multi's chunk became a positive
    assert a.meta["merged_lines"] == [1, 3, 4] and a.meta["merged_query_ids"] == ["byo:1", "dup", "byo:4"]
    assert kept.positive_doc_ids == [train_doc] and "merged_lines" not in kept.meta
    # 1 train + 2 eval documents: "majority" puts the merged pair in eval and drops the train document
    assert (split_q.split, split_q.positive_doc_ids, split_q.meta["dropped_train_positives"]) == (
        "eval", [eval_doc, other_eval], [train_doc])
    assert split_q.positive_grades == {eval_doc: 2, other_eval: 1}
    assert (m.counts["pairs_file_rows"], m.counts["duplicate_queries_merged"], m.counts["pairs"]) == (6, 3, 3)
    (train_pos,), _ = load_pairs(_pairs_file(tmp_path / "tp.jsonl", [
        {"query": "split query", "positive_ids": [train_doc]},
        {"query": "Split Query", "positive_ids": [eval_doc, other_eval]}]), chunks, split_policy="train_positives")
    assert (train_pos.split, train_pos.positive_doc_ids) == ("train", [train_doc])


def test_augment_adds_offline_pairs_of_the_train_documents_beside_the_users(chunks_dir, corpus_views, tmp_path):
    """sdg.augment: offline train pairs of the TRAIN documents only, at most augment x the user's judged train
    positives, none repeating a user's query; the user's pairs unchanged; off by default."""
    chunks, train_doc, eval_doc, multi = corpus_views
    generated = OfflineGenerator(SdgConfig()).generate([c for c in chunks if c.split == "train"], "train")
    pf = _pairs_file(tmp_path / "p.jsonl", [
        {"query": generated[0].query.upper(), "positive_ids": [train_doc]},  # a user query the generator also makes
        {"query": "what is kept apart", "positive_ids": [multi]},
        {"query": "an eval question", "positive_ids": [eval_doc]}])
    plain, user = _run(chunks_dir, tmp_path, "plain", pairs_file=str(pf))
    assert plain.counts["augment_pairs"] == 0 and [p.source for p in user] == ["byo"] * 3
    m, pairs = _run(chunks_dir, tmp_path, "aug", pairs_file=str(pf), augment=4.0)
    extra = pairs[len(user):]
    assert pairs[:len(user)] == user
    assert 0 < len(extra) == m.counts["augment_pairs"] <= 4 * 2  # 2 judged train positives (train_doc, multi)
    assert all(p.split == "train" and p.source.startswith("offline/") for p in extra)
    train_docs = {c.doc_id for c in chunks if c.split == "train"}
    by_id = {c.chunk_id: c for c in chunks}
    assert all(by_id[c].doc_id in train_docs for p in extra for c in p.positive_chunk_ids)
    assert all(set(p.positive_doc_ids) <= train_docs for p in extra)
    assert {query_key(p.query) for p in extra}.isdisjoint(query_key(p.query) for p in user)
    assert m.counts["source_byo"] == 3 and sum(v for k, v in m.counts.items() if k.startswith("source_offline")) == len(extra)
    cfg = SdgConfig(augment=10.0)
    every, counts = augment_pairs(user, chunks, cfg)
    other = [user[0].model_copy(update={"query": "a question nobody generates"}), *user[1:]]
    control = [p.query for p in augment_pairs(other, chunks, cfg)[0]]
    assert generated[0].query in control and [p.query for p in every] == [q for q in control if q != generated[0].query]
    assert counts == {"augment_cap": 20, "augment_pairs": len(every)}
    few, counts = augment_pairs(user, chunks, SdgConfig(augment=10.0, max_pairs=3))  # sdg.max_pairs bounds it too
    assert len(few) <= 3 and counts["augment_cap"] == 3


def test_byo_graded_text_positives_and_ungraded_files(chunks_dir, corpus_views, tmp_path):
    """Grades of text positives land on the chunk they resolve to; all-1 grades are not stored (ungraded pair)."""
    chunks, train_doc, _, multi = corpus_views
    a, b = [c for c in chunks if c.doc_id == multi][:2]
    (graded, plain), stats = load_pairs(_pairs_file(tmp_path / "g.jsonl", [
        {"query": "graded chunks", "positives": [a.text, b.text], "relevance": {b.text: 3}},
        {"query": "plain", "positive_ids": [train_doc], "relevance": {train_doc: 1}},
    ]), chunks)
    assert graded.relevance == "chunk" and graded.positive_grades == {a.chunk_id: 1, b.chunk_id: 3}
    assert plain.positive_grades == {} and stats["graded_pairs"] == 1 and stats["duplicate_queries_merged"] == 0


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{broken", "not valid JSON"),
        ({"positive_ids": ["x"]}, '"query" must be a string, got nothing'),
        ({"query": 3, "positive_ids": ["x"]}, '"query" must be a string, got int'),
        ({"query": "q", "positive_ids": ["x"], "positives": ["t"]}, "got both"),
        ({"query": "q"}, "got neither"),
        ({"query": "q", "positive_ids": "x"}, '"positive_ids" must be a list'),
        ({"query": "q", "positives": [1]}, '"positives" must be a list of strings'),
        ({"query": "q", "positives": ["t"], "negatives": "n"}, '"negatives" must be a list'),
        ({"query": "q", "positive_id": ["x"]}, "unknown key(s) ['positive_id']"),
        ({"query": "q", "positive_ids": ["x"], "query_id": "byo:1"}, "duplicate query_id 'byo:1'"),
        ({"query": "q", "positive_ids": ["x"], "relevance": [2]}, '"relevance" must be an object'),
        ({"query": "q", "positive_ids": ["x"], "relevance": {"y": 2}}, "not among this line's positives"),
        ({"query": "q", "positive_ids": ["x"], "relevance": {"x": 0}}, "integers >= 1 (drop positives judged 0)"),
        ({"query": "q", "positives": ["t"], "relevance": {"t": 1.5}}, "integers >= 1"),
    ],
)
def test_byo_malformed_line_names_file_and_line(chunks_dir, tmp_path, line, expected):
    pf = _pairs_file(tmp_path / "bad.jsonl", [{"query": "fine", "positive_ids": ["assert.rst"]}, line])
    with pytest.raises(InputError) as e:
        sdg.run(chunks_dir, tmp_path / "out", SdgConfig(), pairs_file=str(pf))
    assert f"{pf}:2" in str(e.value) and expected in str(e.value)


def test_byo_missing_or_empty_file(chunks_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        sdg.run(chunks_dir, tmp_path / "o", SdgConfig(), pairs_file=str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="holds no pairs"):
        sdg.run(chunks_dir, tmp_path / "o", SdgConfig(), pairs_file=str(tmp_path / "empty.jsonl"))


def test_pairs_from_beir_qrels(tmp_path):
    from embedforge.stages.sdg.byo import main

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text('{"_id": "1", "text": "first query"}\n{"_id": "2", "text": "second"}\n'
                                        '{"_id": "3", "text": "never judged"}\n')
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t2\n1\td2\t0\n2\td3\t1\n1\td4\t1\n")
    rows = sdg.pairs_from_beir_qrels(beir, "train")
    assert rows == [{"query_id": "1", "query": "first query", "positive_ids": ["d1", "d4"], "relevance": {"d1": 2, "d4": 1}},
                    {"query_id": "2", "query": "second", "positive_ids": ["d3"]}]  # grades only where not all 1
    main([str(beir), str(tmp_path / "p.jsonl")])
    assert [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()] == rows
    with pytest.raises(InputError, match=r"qrels/test.tsv does not exist"):
        pairs_from_beir_qrels(beir, "test")
    (beir / "qrels" / "bad.tsv").write_text("1\td1\n")
    with pytest.raises(InputError, match=r"bad.tsv:1: expected"):
        pairs_from_beir_qrels(beir, "bad")


# ------------------------------------------------------------------------------------------------ component
def test_component_generates_or_reads_pairs(chunks_dir, pairs_dir, tmp_path, base_model):
    from embedforge.components.sdg.component import sdg as component
    from kfp import dsl

    out, metrics = dsl.Dataset(uri=str(tmp_path / "gen")), dsl.Metrics(uri=str(tmp_path / "m1"))
    component.python_func(chunks=dsl.Dataset(uri=str(chunks_dir)), pairs_file="", base_model=base_model, config={},
                          pairs=out, metrics=metrics)
    assert (Path(out.path) / PAIRS_FILE).read_bytes() == (pairs_dir / PAIRS_FILE).read_bytes()
    assert metrics.metadata["pairs"] == read_manifest(pairs_dir).counts["pairs"]

    pf = _pairs_file(tmp_path / "p.jsonl", [{"query": "what does assert do", "positive_ids": ["assert.rst"]}])
    out, metrics = dsl.Dataset(uri=str(tmp_path / "byo")), dsl.Metrics(uri=str(tmp_path / "m2"))
    component.python_func(chunks=dsl.Dataset(uri=str(chunks_dir)), pairs_file=str(pf), base_model=base_model,
                          config={"byo_split": "any_eval"}, pairs=out, metrics=metrics)
    assert [p.query for p in read_pairs(out.path)] == ["what does assert do"] and metrics.metadata["source_byo"] == 1


# ----------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_cranfield_corpus_with_qrels_pairs(shared_data, tmp_path, base_model):
    from embedforge.config import IngestConfig
    from embedforge.stages import ingest
    from embedforge.stages.sdg.byo import write_pairs_file

    cran = shared_data / "cranfield"
    m = ingest.run(cran / "corpus.jsonl", tmp_path / "chunks", IngestConfig(), base_model=base_model)
    assert m.counts["documents"] >= 1390 and m.counts["eval_documents"] > 200
    rows = pairs_from_beir_qrels(cran, "train")
    assert len(rows) > 100
    write_pairs_file(rows, tmp_path / "pairs.jsonl")
    m = sdg.run(tmp_path / "chunks", tmp_path / "pairs", SdgConfig(), pairs_file=str(tmp_path / "pairs.jsonl"))
    pairs = read_pairs(tmp_path / "pairs")
    assert len(pairs) == len(rows) and m.counts["gen_unresolved_positives"] == 0
    assert all(p.relevance == "document" and p.positive_doc_ids for p in pairs)
    assert m.counts["train_pairs"] > 0 and m.counts["eval_pairs"] > 0
    m2 = sdg.run(tmp_path / "chunks", tmp_path / "pairs2", SdgConfig(byo_split="train_positives"),
                 pairs_file=str(tmp_path / "pairs.jsonl"))
    m3 = sdg.run(tmp_path / "chunks", tmp_path / "pairs3", SdgConfig(byo_split="any_eval"),
                 pairs_file=str(tmp_path / "pairs.jsonl"))
    assert m2.counts["train_pairs"] > 3 * m3.counts["train_pairs"]  # many-positive qrels: most pairs touch an eval doc
    assert m3.counts["train_pairs"] < m.counts["train_pairs"] < m2.counts["train_pairs"]  # majority in between

"""Ingest on real files: the tiny sample corpus, HTML/Markdown/text written here, BEIR corpora, every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedforge.config import IngestConfig
from embedforge.contracts import CHUNKS_FILE, read_chunks, read_manifest
from embedforge.errors import InputError
from embedforge.retrieval.text import split_sentences
from embedforge.stages import ingest

LONG_PARA = (
    "Gradient clipping bounds the norm of the update. It keeps training stable when the loss spikes. "
    "Warmup raises the learning rate slowly at the start. Weight decay pulls weights towards zero. "
    "Mixed precision halves the memory of activations. Checkpoints let a run resume after a failure. "
)


def _write(root: Path, rel: str, text: str | bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def _run(corpus, tmp_path, base_model, name="out", **cfg):
    out = tmp_path / name
    manifest = ingest.run(corpus, out, IngestConfig(**cfg), base_model=base_model)
    return manifest, read_chunks(out)


# ------------------------------------------------------------------------------------------------ tiny corpus
def test_tiny_corpus_chunks_ids_titles_and_split(chunks_dir, base_model):
    from transformers import AutoTokenizer

    chunks = read_chunks(chunks_dir)
    m = read_manifest(chunks_dir)
    assert m.stage == "ingest"
    assert m.counts["documents"] == 16 and m.counts["chunks"] == len(chunks)
    assert m.counts["train_documents"] + m.counts["eval_documents"] == 16
    assert m.counts["eval_documents"] >= 1 and m.counts["train_documents"] >= 1
    assert m.counts["train_chunks"] + m.counts["eval_chunks"] == len(chunks)
    assert {"duplicate_chunks_dropped", "skipped_files"} <= set(m.counts)

    # deterministic ids '<doc_id>#<position>', doc ids are file names relative to the corpus folder
    for c in chunks:
        assert c.chunk_id == f"{c.doc_id}#{c.position}"
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    assert {c.doc_id for c in chunks} == {f"{t}.rst" for t in
                                          ["assert", "break", "continue", "del", "global", "if", "import", "lambda",
                                           "nonlocal", "pass", "raise", "return", "while", "with", "yield", "for"]}
    # rst headings (underlined with *) are titles
    titles = {c.doc_id: c.title for c in chunks}
    assert titles["assert.rst"] == 'The "assert" statement'
    assert titles["for.rst"] == 'The "for" statement'
    # document-level split: every chunk of a document shares its split
    by_doc: dict[str, set[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, set()).add(c.split)
    assert all(len(s) == 1 for s in by_doc.values())
    # hard token cap (special tokens included) and minimum length
    tok = AutoTokenizer.from_pretrained(base_model)
    assert max(len(tok(c.text)["input_ids"]) for c in chunks) <= IngestConfig().max_chunk_tokens
    assert min(len(c.text) for c in chunks) >= IngestConfig().min_chunk_chars
    # code blocks stay intact (the grammar line is not sentence-split), sentences are not cut mid-way
    assert any('for_stmt ::= "for" target_list "in" starred_list ":" suite' in c.text for c in chunks)


def test_same_input_gives_identical_output(tiny_corpus, tmp_path, base_model, chunks_dir):
    _run(tiny_corpus, tmp_path, base_model)
    assert (tmp_path / "out" / CHUNKS_FILE).read_bytes() == (chunks_dir / CHUNKS_FILE).read_bytes()


def test_sentences_per_chunk_and_token_cap(tmp_path, base_model):
    from transformers import AutoTokenizer

    corpus = tmp_path / "c"
    _write(corpus, "notes.txt", " ".join(f"Sentence number {i} is about topic {i} of the notes." for i in range(18)))
    _, chunks = _run(corpus, tmp_path, base_model, sentences_per_chunk=2, eval_fraction=0.0)
    assert len(chunks) == 9  # 18 sentences, 2 a chunk
    assert all(len(split_sentences(c.text)) == 2 for c in chunks)

    # one giant sentence (no punctuation) is cut by tokens under the cap
    _write(corpus, "notes.txt", " ".join(f"word{i} alpha beta" for i in range(300)))
    _, chunks = _run(corpus, tmp_path, base_model, "capped", max_chunk_tokens=32, eval_fraction=0.0)
    tok = AutoTokenizer.from_pretrained(base_model)
    lengths = [len(tok(c.text)["input_ids"]) for c in chunks]
    assert len(chunks) > 10 and max(lengths) <= 32
    # nothing lost: the pieces put back together are the original words
    assert " ".join(c.text for c in chunks).split() == (corpus / "notes.txt").read_text().split()


def test_short_tail_merged_short_document_kept_empty_dropped(tmp_path, base_model):
    corpus = tmp_path / "c"
    _write(corpus, "a.txt", LONG_PARA + "\n\nShort tail.\n")
    _write(corpus, "tiny.txt", "Too short.")
    _write(corpus, "empty.txt", "   \n\n  ")
    m, chunks = _run(corpus, tmp_path, base_model, eval_fraction=0.0)
    a = [c for c in chunks if c.doc_id == "a.txt"]
    assert len(a) == 2 and a[-1].text.endswith("Short tail.")  # 6 sentences: 5 + (1 + merged tail)
    assert [c.text for c in chunks if c.doc_id == "tiny.txt"] == ["Too short."]
    assert m.counts["short_documents"] == 1 and m.counts["empty_documents"] == 1
    assert "empty.txt" not in {c.doc_id for c in chunks}


def test_html_markdown_text_and_nested_folders(tmp_path, base_model):
    corpus = tmp_path / "site"
    _write(corpus, "guide/install.html", """<html><head><title>Installing the Widget</title>
        <style>body { color: red; }</style><script>var secret = "tracking";</script></head>
        <body><nav>Home | Docs</nav><h1>Install</h1>
        <p>Download the <b>widget</b> package from the
        release page. Unpack it into a folder of your choice.</p>
        <pre>tar xzf widget.tgz
cd widget</pre>
        <p>Run the installer as an administrator. It asks for a licence key.</p></body></html>""")
    _write(corpus, "README.md", "# Widget handbook\n\nIntro paragraph that explains what the widget does for you.\n\n"
                                "```python\nimport widget\nwidget.run()\n```\n\n## Usage\n\nCall run. It returns.\n")
    _write(corpus, "notes.txt", "Plain notes without any heading. They have two sentences at least.")
    _write(corpus, "image.png", b"\x89PNG\r\n")
    _write(corpus, ".hidden/secret.md", "# Not a document\n\nHidden folders are ignored entirely.")
    m, chunks = _run(corpus, tmp_path, base_model, eval_fraction=0.0)

    docs = {c.doc_id for c in chunks}
    assert docs == {"guide/install.html", "README.md", "notes.txt"}  # posix relative paths, hidden skipped
    assert m.counts["skipped_files"] == 1  # image.png
    titles = {c.doc_id: c.title for c in chunks}
    assert titles == {"guide/install.html": "Installing the Widget", "README.md": "Widget handbook", "notes.txt": ""}
    html = " ".join(c.text for c in chunks if c.doc_id == "guide/install.html")
    assert "secret" not in html and "color" not in html  # script and style dropped
    assert "Download the widget package from the release page." in html  # inline tags and line breaks joined
    assert "tar xzf widget.tgz\n" in html  # <pre> kept line by line
    md = " ".join(c.text for c in chunks if c.doc_id == "README.md")
    assert "import widget\nwidget.run()" in md and "#" not in md.replace("```python", "")


def test_exact_duplicate_chunks_dropped(tmp_path, base_model):
    corpus = tmp_path / "c"
    five = " ".join(split_sentences(LONG_PARA)[:5])
    _write(corpus, "a.txt", five)
    closing = "A new closing paragraph that only the second file has in it, long enough to stand alone."
    _write(corpus, "b.txt", five.replace(". ", ".\n   ") + "\n\n" + closing)
    m, chunks = _run(corpus, tmp_path, base_model, eval_fraction=0.0)
    assert m.counts["duplicate_chunks_dropped"] == 1  # b's first chunk equals a's (whitespace-normalised)
    assert [c.chunk_id for c in chunks if c.doc_id == "b.txt"] == ["b.txt#1"]  # ids do not shift


# ---------------------------------------------------------------------------------------------------- split
def test_split_is_stable_when_documents_are_added():
    many = [f"doc-{i}.md" for i in range(400)]
    full = ingest.assign_splits(many, 0.2, seed=13)
    part = ingest.assign_splits(many[:150], 0.2, seed=13)
    assert all(part[d] == full[d] for d in part)
    share = sum(s == "eval" for s in full.values()) / len(full)
    assert 0.14 < share < 0.26
    assert ingest.assign_splits(many, 0.2, seed=14) != full  # the seed matters


def test_split_guarantees_and_zero_fraction():
    two = ingest.assign_splits(["a", "b"], 0.01, seed=13)
    assert sorted(two.values()) == ["eval", "train"]
    two = ingest.assign_splits(["a", "b"], 0.99, seed=13)
    assert sorted(two.values()) == ["eval", "train"]
    assert set(ingest.assign_splits(["a", "b", "c"], 0.0, seed=13).values()) == {"train"}
    assert ingest.assign_splits(["only"], 0.5, seed=1) in ({"only": "train"}, {"only": "eval"})


# ----------------------------------------------------------------------------------------------------- BEIR
def test_beir_corpus_file_or_folder(tmp_path, base_model):
    beir = tmp_path / "beir"
    rows = [
        {"_id": "d1", "title": "Wing flutter", "text": "flutter of a wing at high speed . the model was tested in a tunnel ."},
        {"_id": 2, "title": "", "text": "boundary layer transition on a flat plate . measurements agree with theory ."},
        {"_id": "d3", "title": "Empty", "text": ""},
    ]
    _write(beir, "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    m1, c1 = _run(beir, tmp_path, base_model, "a")
    m2, c2 = _run(beir / "corpus.jsonl", tmp_path, base_model, "b")
    assert [c.model_dump() for c in c1] == [c.model_dump() for c in c2]
    assert {c.doc_id: c.title for c in c1} == {"d1": "Wing flutter", "2": ""}
    assert m1.counts["documents"] == 2 and m1.counts["empty_documents"] == 1
    assert m1.counts["eval_documents"] == 1  # >= 1 eval document whenever there are >= 2 documents


# --------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_path_and_the_fix(tmp_path, base_model):
    def err(corpus) -> str:
        with pytest.raises(InputError) as e:
            ingest.run(corpus, tmp_path / "out", IngestConfig(), base_model=base_model)
        return str(e.value)

    missing = tmp_path / "nope"
    assert str(missing) in err(missing) and "does not exist" in err(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no supported files" in err(empty) and str(empty) in err(empty)
    _write(empty, "data.csv", "a,b\n1,2\n")
    assert "no supported files" in err(empty)

    bad = tmp_path / "latin"
    f = _write(bad, "caf.txt", "café au lait".encode("latin-1"))
    msg = err(bad)
    assert str(f) in msg and "UTF-8" in msg

    blanks = tmp_path / "blanks"
    _write(blanks, "a.md", "\n\n")
    _write(blanks, "b.html", "<html><script>x()</script></html>")
    assert "empty" in err(blanks)

    single = _write(tmp_path / "single", "a.txt", "One document.")
    assert "single file" in err(single)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "not valid JSON"),
        ('{"title": "t", "text": "x"}', 'missing or empty "_id"'),
        ('{"_id": "a", "text": 5}', '"text" must be a string'),
        ('{"_id": "d1", "text": "again"}', 'duplicate "_id"'),
        ('["a", "b"]', "expected a JSON object"),
    ],
)
def test_malformed_corpus_line_names_file_and_line(tmp_path, base_model, line, expected):
    path = _write(tmp_path / "beir", "corpus.jsonl", '{"_id": "d1", "title": "", "text": "fine text here."}\n' + line + "\n")
    with pytest.raises(InputError) as e:
        ingest.run(path, tmp_path / "out", IngestConfig(), base_model=base_model)
    assert f"{path}:2" in str(e.value) and expected in str(e.value)


# ------------------------------------------------------------------------------------------------ component
def test_component_writes_artifact_and_metrics(tiny_corpus, tmp_path, base_model, chunks_dir):
    from embedforge.components.ingest.component import ingest as component
    from kfp import dsl

    chunks = dsl.Dataset(uri=str(tmp_path / "chunks"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    component.python_func(corpus_path=str(tiny_corpus), base_model=base_model, config={}, chunks=chunks, metrics=metrics,
                          tracking_uri="sqlite:///unused.db")
    assert (Path(chunks.path) / CHUNKS_FILE).read_bytes() == (chunks_dir / CHUNKS_FILE).read_bytes()
    assert metrics.metadata["documents"] == 16 and metrics.metadata["chunks"] == read_manifest(chunks_dir).counts["chunks"]


# ------------------------------------------------------------------------------------------ large documents
@pytest.fixture(scope="module")
def huge_line_ingest(tmp_path_factory):
    """``embedforge ingest`` (a child process) of one 20 MB single-line file: (output folder, peak RSS bytes)."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from ingest_memory import peak_rss, write_prose

    root = tmp_path_factory.mktemp("huge")
    (root / "corpus").mkdir()
    write_prose(root / "corpus" / "big.txt", 20_000_000, seed=1, single_line=True)
    (root / "corpus" / "small.txt").write_text(LONG_PARA, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rss, _, rc = peak_rss([sys.executable, "-m", "embedforge.cli", "ingest", "--corpus", str(root / "corpus"),
                           "--out", str(root / "out")], env)
    assert rc == 0
    return root / "out", rss


def test_a_huge_single_line_document_becomes_sections_in_both_splits(huge_line_ingest):
    from embedforge.stages.ingest.readers import SECTION_CHARS

    out, _ = huge_line_ingest
    chunks = read_chunks(out)
    sections = {c.doc_id for c in chunks if c.doc_id.startswith("big.txt/section-")}
    assert len(sections) >= 20_000_000 // SECTION_CHARS
    assert not any(c.doc_id == "big.txt" for c in chunks)
    assert {c.split for c in chunks if c.doc_id in sections} == {"train", "eval"}
    assert any(c.doc_id == "small.txt" for c in chunks)
    counts = read_manifest(out).counts
    assert counts["documents"] == len(sections) + 1 and counts["chunks"] == len(chunks)
    assert max(len(c.text) for c in chunks) < 5_000  # chunks stay chunk-sized


def test_a_huge_single_line_document_ingests_in_bounded_memory(huge_line_ingest):
    """A ceiling, not a speed target (bench/ingest_memory.py measures): reading the 20 MB line whole and
    tokenising it at once took 3.2 GB."""
    _, rss = huge_line_ingest
    assert rss < 1_000 * 2**20, f"peak RSS {rss / 2**20:.0f} MiB"


def test_section_size_is_a_setting(tmp_path, base_model):
    """``ingest.section_chars``: the same 150k-character file is one document at the default and three sections
    at 60k, for plain text (read in blocks) and for a BEIR corpus line alike."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from ingest_memory import write_prose

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_prose(corpus / "long.txt", 150_000, seed=3, single_line=True)
    text = (corpus / "long.txt").read_text()
    beir = tmp_path / "beir" / "corpus.jsonl"
    beir.parent.mkdir()
    beir.write_text(json.dumps({"_id": "long", "title": "", "text": text}) + "\n")
    for source, doc_id in ((corpus, "long.txt"), (beir, "long")):
        default = ingest.run(source, tmp_path / "default", IngestConfig(), base_model=base_model)
        small = ingest.run(source, tmp_path / "small", IngestConfig(section_chars=60_000), base_model=base_model)
        assert default.counts["documents"] == 1
        assert small.counts["documents"] == 3
        sections = {c.doc_id for c in read_chunks(tmp_path / "small")}
        assert sections == {f"{doc_id}/section-{n:04d}" for n in (1, 2, 3)}
    with pytest.raises(ValueError, match="section_chars"):
        IngestConfig(section_chars=100)

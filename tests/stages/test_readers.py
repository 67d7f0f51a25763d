"""Document readers on real files written here: markdown, reStructuredText, HTML, text, folders and BEIR corpora.

Each reader is checked through what the chunker sees: the title and the segments of the plain text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedforge.retrieval.text import split_segments
from embedforge.stages.ingest.readers import iter_documents, read_file


def _segments(text: str) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in split_segments(text)]


@pytest.mark.parametrize(
    "name, raw, title, segments",
    [
        pytest.param(
            "a.md", "# Widget handbook\n\nWhat the widget does.\n\n## Usage\n\nCall run. It returns.\n",
            "Widget handbook",
            [("heading", "Widget handbook"), ("prose", "What the widget does."), ("heading", "Usage"),
             ("prose", "Call run."), ("prose", "It returns.")],
            id="md-atx",
        ),
        pytest.param(
            "a.md", "Handbook\n========\n\nBody text here.\n\nUsage\n-----\n\nMore text.\n",
            "Handbook",
            [("heading", "Handbook"), ("prose", "Body text here."), ("heading", "Usage"), ("prose", "More text.")],
            id="md-setext",
        ),
        pytest.param(
            "a.md", "## Intro ##\n\nText here.\n\n# Main\n\nMore.\n", "Main",
            [("heading", "Intro"), ("prose", "Text here."), ("heading", "Main"), ("prose", "More.")],
            id="md-title-is-first-level-one-heading",
        ),
        pytest.param(
            "a.md", "# Shell\n\n```bash\n# not a heading\nls -l\n```\n", "Shell",
            [("heading", "Shell"), ("code", "```bash\n# not a heading\nls -l\n```")],
            id="md-hash-inside-fence",
        ),
        pytest.param(
            "a.rst", "Guide\n=====\n\nBody text.\n\nSection\n-------\n\nMore.\n", "Guide",
            [("heading", "Guide"), ("prose", "Body text."), ("heading", "Section"), ("prose", "More.")],
            id="rst-underlined",
        ),
        pytest.param(
            "a.rst", "=======\n Guide\n=======\n\nBody text.\n", "Guide",
            [("heading", "Guide"), ("prose", "Body text.")],
            id="rst-overlined",
        ),
        pytest.param(
            "a.rst", "Example::\n\n    x = 1\n    print(x)\n\nThat is all.\n", "",
            [("prose", "Example::"), ("code", "    x = 1\n    print(x)"), ("prose", "That is all.")],
            id="rst-literal-block",
        ),
        pytest.param(
            "a.html",
            "<html><head><title>Installing  the Widget</title><style>p { color: red; }</style></head><body>"
            "<script>track()</script><h1>Install</h1><p>Download the <b>widget</b>\npackage. Unpack it.</p>"
            "<pre>tar xzf w.tgz\ncd w</pre><p>Line one<br>line two.</p></body></html>",
            "Installing the Widget",
            [("heading", "Install"), ("prose", "Download the widget package."), ("prose", "Unpack it."),
             ("code", "    tar xzf w.tgz\n    cd w"), ("prose", "Line one line two.")],
            id="html",
        ),
        pytest.param(
            "a.htm", "<body><h1>Only  Heading</h1><p>Some body text.</p></body>", "Only Heading",
            [("heading", "Only Heading"), ("prose", "Some body text.")],
            id="html-title-from-h1",
        ),
        pytest.param(
            "a.txt", "# Not markup in a text file\n\nPlain text.", "",
            [("heading", "# Not markup in a text file"), ("prose", "Plain text.")],  # no title, the '#' stays
            id="txt",
        ),
    ],
)
def test_read_file(tmp_path, name, raw, title, segments):
    path = tmp_path / name
    path.write_text(raw, encoding="utf-8")
    doc = read_file(path, name)
    assert (doc.doc_id, doc.title) == (name, title)
    assert _segments(doc.text) == segments


def test_read_file_drops_utf8_bom(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfHello there.")
    assert read_file(path, "bom.txt").text == "Hello there."


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def test_folder_order_ids_hidden_and_skipped(tmp_path):
    _write(tmp_path, {"b.txt": "B.", "a/z.md": "Z.", "a/y.rst": "Y.", "notes.csv": "x,y", ".git/c.md": "no",
                      "a/.hidden.txt": "no"})
    docs, skipped, kind = iter_documents(tmp_path, [".txt", "md", ".RST"])
    docs = list(docs)
    assert kind == "folder" and skipped == 1  # notes.csv; hidden files are not counted
    assert [d.doc_id for d in docs] == ["a/y.rst", "a/z.md", "b.txt"]  # sorted posix paths relative to the folder


@pytest.mark.parametrize("point_at", ["folder", "file"])
def test_beir_corpus_ids_titles_and_nulls(tmp_path, point_at):
    rows = [{"_id": 7, "title": "  Wing \n flutter ", "text": "flutter of a wing ."},
            {"_id": "d2", "title": None, "text": None}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _write(tmp_path, {"ignored.txt": "a folder holding corpus.jsonl is read as BEIR"})
    docs, skipped, kind = iter_documents(tmp_path if point_at == "folder" else tmp_path / "corpus.jsonl", [".txt"])
    docs = list(docs)
    assert (kind, skipped) == ("beir", 0)
    assert [(d.doc_id, d.title, d.text) for d in docs] == [("7", "Wing flutter", "flutter of a wing ."),
                                                           ("d2", "", "")]

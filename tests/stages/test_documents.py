"""PDF, DOCX and PPTX corpus files, written here with reportlab, python-docx, python-pptx and msoffcrypto-tool
(Office's password encryption), read through the ``documents`` extra into chunks: text, titles, headings that
start chunks, PDF pages and PPTX slides as chunk pages; damaged, truncated, empty, encrypted and text-less files
skipped with one line each and counted; a corpus folder without the extra installed; ``embedforge ingest`` over a
mixed folder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from embedforge.config import IngestConfig
from embedforge.contracts import read_chunks, read_manifest
from embedforge.errors import InputError
from embedforge.stages import ingest
from embedforge.stages.ingest.documents import EXTRA_HINT
from embedforge.stages.ingest.readers import PAGE_BREAK, iter_documents, paged

INSTALL = (
    "The installer copies the widget into the program folder. It asks for a licence key before it starts. "
    "Keep the key at hand, because the installer cannot continue without it."
)
CONFIGURE = (
    "Settings live in a file called widget.toml next to the program. Each setting has a comment that explains it. "
    "Change the port when another service already listens on the default one."
)
TROUBLE = (
    "When the widget does not start, read the log file first. Most failures name the setting that is wrong. "
    "Restart the service after you fixed the setting."
)


# ------------------------------------------------------------------------------------------------ real files
def write_pdf(path: Path, pages: list[tuple[str, str]], title: str = "", encrypt: str | None = None) -> Path:
    """A PDF with one heading and one paragraph per page and the page number as a footer (reportlab)."""
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    story = []
    for n, (heading, body) in enumerate(pages):
        if n:
            story.append(PageBreak())
        story += [Paragraph(heading, styles["Heading1"]), Paragraph(body, styles["BodyText"])]

    def footer(canvas, doc):
        canvas.drawString(290, 30, str(doc.page))

    doc = SimpleDocTemplate(str(path), title=title, encrypt=encrypt)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return path


def write_scan_pdf(path: Path) -> Path:
    """A PDF page with a drawing and no text layer, as a scanner writes (reportlab)."""
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    c.rect(100, 100, 300, 400, fill=1)
    c.showPage()
    c.save()
    return path


def write_docx(path: Path) -> Path:
    """A Word file with a title, two headed sections, a link-free table and a bold run (python-docx)."""
    import docx

    d = docx.Document()
    d.add_heading("Widget handbook", level=0)
    d.add_paragraph("This handbook explains how to install and configure the widget on a server.")
    d.add_heading("Installation", level=1)
    p = d.add_paragraph("The installer copies the widget into the program folder. ")
    p.add_run("It asks for a licence key").bold = True
    p.add_run(" before it starts. Keep the key at hand, because the installer cannot continue without it.")
    d.add_heading("Configuration", level=1)
    d.add_paragraph(CONFIGURE)
    d.add_paragraph("Raise max_connections to 2*64 on a busy server.")
    table = d.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Setting", (0, 1): "Default", (1, 0): "port", (1, 1): "8080"}.items():
        table.cell(r, c).text = text
    d.save(str(path))
    return path


def write_encrypted_office(path: Path, source: Path, password: str) -> Path:
    """``source`` (a DOCX/PPTX) saved with a password, as Office does it (msoffcrypto-tool's OOXML encryption)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    with source.open("rb") as src, path.open("wb") as out:
        OOXMLFile(src).encrypt(password, out)
    return path


def write_pptx(path: Path) -> Path:
    """A deck of two slides: titles, bullets, speaker notes on the second (python-pptx)."""
    import pptx

    deck = pptx.Presentation()
    for title, bullets, notes in [
        ("Widget release 2.0", ["Builds are twice as fast", "Images are smaller", "Releases are signed"], ""),
        ("Migrating from 1.x", ["Back up the settings file", "Run the upgrade command"],
         "Tell customers that the upgrade keeps their settings. The old file is renamed, never deleted."),
    ]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        frame = slide.placeholders[1].text_frame
        frame.text = bullets[0]
        for bullet in bullets[1:]:
            frame.add_paragraph().text = bullet
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    deck.save(str(path))
    return path


HTML = """<html><head><title>Widget FAQ</title><script>track()</script></head><body>
<h1>Frequently asked questions</h1><p>Can the widget run on a laptop? Yes, it needs only two gigabytes of
memory.</p><h2>Licences</h2><p>A licence covers one server. Ask sales for a site licence.</p></body></html>"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every kind of file these tests read, good and bad, written once."""
    root = tmp_path_factory.mktemp("files")
    guide = write_pdf(root / "guide.pdf", [("Installing the Widget", INSTALL), ("Configuration", CONFIGURE),
                                           ("Troubleshooting", TROUBLE)], title="Widget Guide")
    handbook = write_docx(root / "handbook.docx")
    deck = write_pptx(root / "deck.pptx")
    bad = {
        "locked.pdf": write_pdf(root / "locked.pdf", [("Secret plans", INSTALL)], encrypt="hunter2"),
        "truncated.pdf": root / "truncated.pdf",
        "empty.pdf": root / "empty.pdf",
        "scan.pdf": write_scan_pdf(root / "scan.pdf"),
        "locked.docx": write_encrypted_office(root / "locked.docx", handbook, "hunter2"),
        "broken.docx": root / "broken.docx",
        "truncated.pptx": root / "truncated.pptx",
        "photos.pptx": root / "photos.pptx",
    }
    data = guide.read_bytes()
    bad["truncated.pdf"].write_bytes(data[: len(data) // 3])
    bad["empty.pdf"].write_bytes(b"")
    bad["broken.docx"].write_bytes(b"This is a text file that someone renamed to .docx.\n")
    bad["truncated.pptx"].write_bytes(deck.read_bytes()[:4000])
    with zipfile.ZipFile(bad["photos.pptx"], "w") as zf:  # a zip archive, but no presentation in it
        zf.writestr("holiday/readme.txt", "Photos of the team outing.")
    return {"guide.pdf": guide, "handbook.docx": handbook, "deck.pptx": deck, **bad}


def corpus_of(root: Path, files: dict[str, Path], names: list[str], extra: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(files[name].read_bytes())
    for name, text in (extra or {}).items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def run(corpus: Path, out: Path, base_model: str, **cfg):
    manifest = ingest.run(corpus, out, IngestConfig(eval_fraction=0.0, **cfg), base_model=base_model)
    return manifest, read_chunks(out)


# ------------------------------------------------------------------------------------------------------- PDF
def test_pdf_pages_headings_and_title_reach_the_chunks(files, tmp_path, base_model):
    corpus = corpus_of(tmp_path / "c", files, ["guide.pdf"])
    manifest, chunks = run(corpus, tmp_path / "out", base_model)

    assert {c.doc_id for c in chunks} == {"guide.pdf"}
    assert {c.title for c in chunks} == {"Widget Guide"}  # the PDF's /Title
    assert [c.page for c in chunks] == [1, 2, 3]  # one chunk a page here: pages are never merged
    assert [c.text.split("\n\n")[0] for c in chunks] == ["Installing the Widget", "Configuration", "Troubleshooting"]
    text = " ".join(" ".join(c.text.split()) for c in chunks)
    for paragraph in (INSTALL, CONFIGURE, TROUBLE):
        assert paragraph in text  # wrapped lines of a paragraph come back as one paragraph
    assert not any(c.text.rstrip().endswith(("1", "2", "3")) for c in chunks)  # the page-number footers are gone
    assert manifest.counts["documents"] == 1 and manifest.counts["unreadable_files"] == 0
    line = json.loads((tmp_path / "out" / "chunks.jsonl").read_text().splitlines()[1])
    assert line["page"] == 2


def test_text_documents_have_no_page_in_their_chunk_lines(files, tmp_path, base_model):
    corpus = corpus_of(tmp_path / "c", files, [], {"notes.md": "# Notes\n\n" + INSTALL})
    _, chunks = run(corpus, tmp_path / "out", base_model)
    assert [c.page for c in chunks] == [None]
    assert "page" not in json.loads((tmp_path / "out" / "chunks.jsonl").read_text().splitlines()[0])


def test_a_long_paged_file_becomes_sections_of_whole_pages():
    pages = ["a" * 40, "b" * 40, "c" * 40, "", "d" * 90, "e" * 10]
    docs = list(paged("big.pdf", "Big", pages, section_chars=100))
    # a section takes pages while they fit in 100 characters: 40 + 40 | 40 + 0 | 90 + 10
    assert [(d.doc_id, d.first_page) for d in docs] == [
        ("big.pdf/section-0001", 1), ("big.pdf/section-0002", 3), ("big.pdf/section-0003", 5)]
    assert [[n for n, _ in d.pages()] for d in docs] == [[1, 2], [3, 4], [5, 6]]
    assert [t for d in docs for _, t in d.pages()] == pages  # every page once, in order, the empty one included
    one = list(paged("small.pdf", "", ["x" + PAGE_BREAK + "y", "z"], section_chars=100))
    assert [(d.doc_id, list(d.pages())) for d in one] == [("small.pdf", [(1, "x\ny"), (2, "z")])]


# ------------------------------------------------------------------------------------------------------ DOCX
def test_docx_headings_start_chunks_and_the_title_is_its_first(files, tmp_path, base_model):
    corpus = corpus_of(tmp_path / "c", files, ["handbook.docx"])
    _, chunks = run(corpus, tmp_path / "out", base_model)

    assert {(c.doc_id, c.title, c.page) for c in chunks} == {("handbook.docx", "Widget handbook", None)}
    firsts = [c.text.split("\n\n")[0] for c in chunks]
    assert firsts[1:] == ["Installation", "Configuration"]  # each heading starts a chunk
    text = "\n\n".join(c.text for c in chunks)
    assert " ".join(INSTALL.split()) in " ".join(text.split())  # the bold run's text, without its ** markers
    assert "**" not in text and "#" not in text
    assert "Raise max_connections to 2*64 on a busy server." in text  # markdown's escapes (max\\_connections) undone
    assert chunks[-1].text.endswith("\n\n    | Setting | Default |\n    | port | 8080 |")  # the table: one block
    assert "port" in text and "8080" in text  # the table's cells


# ------------------------------------------------------------------------------------------------------ PPTX
def test_pptx_slides_are_pages_with_bullets_and_notes(files, tmp_path, base_model):
    corpus = corpus_of(tmp_path / "c", files, ["deck.pptx"])
    _, chunks = run(corpus, tmp_path / "out", base_model, min_chunk_chars=10)

    assert {c.title for c in chunks} == {"Widget release 2.0"}  # the first slide's title
    by_page = {c.page: c.text for c in chunks}
    assert sorted(by_page) == [1, 2]
    assert by_page[1].startswith("Widget release 2.0\n\n")
    assert "- Builds are twice as fast\n\n- Images are smaller" in by_page[1]  # bullets stay apart
    assert by_page[2].startswith("Migrating from 1.x\n\n")
    assert by_page[2].endswith("- Run the upgrade command\n\nTell customers that the upgrade keeps their settings. "
                               "The old file is renamed, never deleted.")  # speaker notes: prose after the slide
    assert "Notes:" not in by_page[2] and "<!--" not in by_page[1]


# ------------------------------------------------------------------------------------------------- bad files
BAD_REASONS = {
    "locked.pdf": "password-protected",
    "truncated.pdf": "damaged or truncated PDF",
    "empty.pdf": "the file is empty (0 bytes)",
    "scan.pdf": "no text in it (a scanned PDF needs OCR first)",
    "locked.docx": "password-protected (encrypted), or an old binary .doc/.ppt saved under this name",
    "broken.docx": "damaged or truncated (not a zip archive",
    "truncated.pptx": "damaged or truncated (not a zip archive",
    "photos.pptx": "damaged .pptx file (",
}


def test_bad_files_are_skipped_one_line_each_and_counted(files, tmp_path, base_model, caplog):
    corpus = corpus_of(tmp_path / "c", files, ["guide.pdf", *BAD_REASONS])
    with caplog.at_level(logging.WARNING):
        manifest, chunks = run(corpus, tmp_path / "out", base_model)

    assert {c.doc_id for c in chunks} == {"guide.pdf"}
    assert manifest.counts["unreadable_files"] == len(BAD_REASONS)
    reasons = read_manifest(tmp_path / "out").result.unreadable_files
    assert sorted(reasons) == sorted(BAD_REASONS)
    for name, why in BAD_REASONS.items():
        assert reasons[name].startswith(why), (name, reasons[name])
        lines = [r.getMessage() for r in caplog.records if f"{corpus / name}: skipped: " in r.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0], (name, lines)
    summary = [r.getMessage() for r in caplog.records if "unreadable file(s)" in r.getMessage()]
    assert summary == [f"ingest: skipped {len(BAD_REASONS)} unreadable file(s): "
                       + "; ".join(f"{n} ({reasons[n]})" for n in list(reasons)[:5]) + "; and 3 more"]
    assert not any(r.exc_info for r in caplog.records)  # no traceback anywhere
    # the pdfminer warnings about the damaged objects stay quiet: only the one line a file
    assert not [r for r in caplog.records if r.name.startswith("pdfminer")]


def test_a_corpus_of_only_unreadable_files_is_the_no_documents_error(files, tmp_path, base_model):
    corpus = corpus_of(tmp_path / "c", files, ["locked.pdf", "broken.docx"])
    with pytest.raises(InputError) as err:
        run(corpus, tmp_path / "out", base_model)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"no document in {corpus} could be read: 2 file(s) skipped")
    assert "broken.docx (damaged or truncated" in msg and "locked.pdf (password-protected" in msg


# ------------------------------------------------------------------------------------------ without the extra
def test_without_the_extra_document_files_are_skipped_with_the_install_line(files, tmp_path, base_model, caplog,
                                                                             monkeypatch):
    """``sys.modules[name] = None`` is how Python itself marks a module as absent: ``import markitdown`` raises
    ImportError exactly as in an environment without the extra."""
    monkeypatch.setitem(sys.modules, "markitdown", None)
    corpus = corpus_of(tmp_path / "c", files, ["guide.pdf", "deck.pptx"], {"notes.txt": INSTALL})
    with caplog.at_level(logging.WARNING):
        manifest, chunks = run(corpus, tmp_path / "out", base_model)
    assert {c.doc_id for c in chunks} == {"notes.txt"}
    assert manifest.counts["unreadable_files"] == 2
    assert read_manifest(tmp_path / "out").result.unreadable_files == {
        "deck.pptx": "the documents extra is not installed", "guide.pdf": "the documents extra is not installed"}
    lines = [r.getMessage() for r in caplog.records if EXTRA_HINT in r.getMessage()]
    assert lines == [f"{corpus}: skipped 2 .pdf/.pptx file(s): reading .pdf/.pptx files needs {EXTRA_HINT} "
                     "(markitdown is not installed)"]

    only = corpus_of(tmp_path / "only", files, ["guide.pdf"])
    with pytest.raises(InputError, match=r"holds only \.pdf files \(1\) and reading \.pdf files needs "
                                         r"pip install 'embedforge\[documents\]'"):
        run(only, tmp_path / "out2", base_model)


# ------------------------------------------------------------------------------------------------ mixed folder
def test_reader_gives_every_format_its_title_and_pages(files, tmp_path):
    corpus = corpus_of(tmp_path / "c", files, ["guide.pdf", "handbook.docx", "deck.pptx", "empty.pdf"],
                       {"faq.html": HTML, "readme.md": "# Read me\n\nText.", "notes.txt": "Plain."})
    unreadable: dict[str, str] = {}
    docs, skipped, kind = iter_documents(corpus, IngestConfig().extensions, unreadable=unreadable)
    got = {d.doc_id: (d.title, d.first_page, len(list(d.pages()))) for d in docs}
    assert got == {"deck.pptx": ("Widget release 2.0", 1, 2), "faq.html": ("Widget FAQ", None, 1),
                   "guide.pdf": ("Widget Guide", 1, 3), "handbook.docx": ("Widget handbook", None, 1),
                   "notes.txt": ("", None, 1), "readme.md": ("Read me", None, 1)}
    assert (skipped, kind, list(unreadable)) == (0, "folder", ["empty.pdf"])


def test_embedforge_ingest_over_a_mixed_folder(files, tmp_path):
    """The command a user runs: every readable format in, the bad file one line on stderr, no traceback."""
    corpus = corpus_of(tmp_path / "c", files, ["guide.pdf", "handbook.docx", "deck.pptx", "locked.pdf"],
                       {"faq.html": HTML, "notes.txt": TROUBLE})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "ingest", "--corpus", str(corpus), "--out",
                        str(tmp_path / "out"), "--set", "ingest.eval_fraction=0.34"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"{corpus / 'locked.pdf'}: skipped: password-protected" in r.stderr
    assert "ingest: skipped 1 unreadable file(s): locked.pdf (password-protected" in r.stderr
    counts = json.loads(r.stdout[r.stdout.index("{"):])["counts"]
    assert counts["documents"] == 5 and counts["unreadable_files"] == 1
    chunks = read_chunks(tmp_path / "out")
    assert {c.doc_id for c in chunks} == {"guide.pdf", "handbook.docx", "deck.pptx", "faq.html", "notes.txt"}
    assert {c.split for c in chunks} == {"train", "eval"}
    faq = [c.text for c in chunks if c.doc_id == "faq.html"]
    assert faq[0].startswith("Frequently asked questions") and faq[-1].startswith("Licences")

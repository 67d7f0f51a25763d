"""PDF, DOCX and PPTX files -> their text, page by page, through the optional ``documents`` extra
(``pip install 'embedforge[documents]'``: markitdown with its docx/pptx parts, pdfminer.six; no model weights).

* PDF: pdfminer.six (what markitdown's PDF converter runs, which joins the pages), one text per page, so a page's
  number can follow its chunks. Layout analysis puts each text box in its own paragraph, and a box is cut where
  the font size changes, which keeps a heading on its own line (the segment splitter then sees it as a
  heading); a line that is only a page number at the top or bottom of a page is dropped. The title is the file's ``/Title`` metadata (reportlab's and some exporters' placeholder
  ``untitled`` counts as none).
* DOCX: markitdown (mammoth): Word's Title and heading styles become markdown ``#`` headings (the first Title or
  level-1 heading is the title); a table becomes an indented block of its rows (one segment, kept whole).
* PPTX: markitdown (python-pptx): one text per slide, the slide title as a ``#`` heading; each line of a text
  frame (a bullet, usually) becomes a list item, so bullets are separate segments instead of one run-on
  sentence; speaker notes follow the slide's text.

Images are dropped (markdown image links, data URIs included), links keep their text, emphasis markers go.

A file that cannot be read raises :class:`Unreadable` with the reason in words (password-protected, damaged or
truncated, not the format its name says, no text); ingest logs it, skips the file and counts it.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: Suffixes read through the ``documents`` extra.
DOCUMENT_SUFFIXES = frozenset({".pdf", ".docx", ".pptx"})
#: What to run when the extra is missing.
EXTRA_HINT = "pip install 'embedforge[documents]'"
#: Modules the readers import; any one missing means the extra is not installed.
_EXTRA_MODULES = ("markitdown", "pdfminer", "mammoth", "pptx")
#: The first bytes of an OLE compound file: what Office writes for a password-protected DOCX/PPTX (and for the
#: old binary .doc/.ppt formats).
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class Unreadable(Exception):
    """A document file that cannot be read; ``str()`` says why, in words a user can act on."""


@dataclass
class Converted:
    """The text of one file: ``pages`` (PDF pages, PPTX slides; one text for a DOCX), markdown or plain text."""

    title: str
    pages: list[str]
    paged: bool
    markdown: bool


def missing_extra() -> str | None:
    """The first module of the ``documents`` extra that does not import, or None when the extra is installed."""
    import importlib

    for name in _EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def read_document(path: Path) -> Converted:
    """Convert one ``.pdf``/``.docx``/``.pptx`` file.

    Raises:
        Unreadable: empty, damaged, truncated, password-protected, or no text in it.
        ImportError: the ``documents`` extra is not installed (check :func:`missing_extra` first).
    """
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise Unreadable("the file is empty (0 bytes)")
    if suffix == ".pdf":
        converted = _read_pdf(data)
    elif suffix in (".docx", ".pptx"):
        converted = _read_office(data, suffix)
    else:
        raise ValueError(f"{path}: not a document suffix ({', '.join(sorted(DOCUMENT_SUFFIXES))})")
    if not any(p.strip() for p in converted.pages):
        raise Unreadable("no text in it" + (" (a scanned PDF needs OCR first)" if suffix == ".pdf" else ""))
    return converted


# ============================================================================================================ PDF
#: Typographic ligatures PDF fonts draw as one glyph (pdfminer returns the ligature character): their letters.
_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                            "\ufb05": "st", "\ufb06": "st"})
_PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?[-–—]?\s*\d{1,5}\s*[-–—]?(?:\s*(?:/|of)\s*\d{1,5})?\s*$", re.IGNORECASE)


def _read_pdf(data: bytes) -> Converted:
    from pdfminer.converter import PDFPageAggregator
    from pdfminer.layout import LAParams
    from pdfminer.pdfdocument import (
        PDFDocument,
        PDFEncryptionError,
        PDFPasswordIncorrect,
    )
    from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
    from pdfminer.pdfpage import PDFPage
    from pdfminer.pdfparser import PDFParser

    if b"%PDF-" not in data[:1024]:  # the header may follow some junk bytes, within the first kilobyte
        raise Unreadable("not a PDF file (no %PDF- header)")
    pages: list[str] = []
    # pdfminer logs every damaged object it steps over; the file's one line comes from ingest instead
    with _quiet("pdfminer"):
        try:
            doc = PDFDocument(PDFParser(io.BytesIO(data)))
            title = _pdf_title(doc)
            rsrc = PDFResourceManager()
            device = PDFPageAggregator(rsrc, laparams=LAParams())
            interpreter = PDFPageInterpreter(rsrc, device)
            for page in PDFPage.create_pages(doc):
                interpreter.process_page(page)
                pages.append(_pdf_page_text(device.get_result()))
        except PDFPasswordIncorrect:
            raise Unreadable("password-protected (encrypted); save it without a password or remove it") from None
        except PDFEncryptionError as exc:
            raise Unreadable(f"encrypted in a way that cannot be read ({exc})") from None
        except Exception as exc:  # pdfminer has no common base error: a damaged file fails anywhere inside it
            after = f" after page {len(pages)}" if pages else ""
            raise Unreadable(f"damaged or truncated PDF{after} ({type(exc).__name__}: {_short(exc)})") from None
    if not pages:
        raise Unreadable("damaged or truncated PDF (no pages found)")
    return Converted(title=title, pages=pages, paged=True, markdown=False)


def _pdf_title(doc) -> str:
    from pdfminer.pdftypes import resolve1
    from pdfminer.utils import decode_text

    for info in doc.info:
        raw = resolve1(info.get("Title"))
        if isinstance(raw, bytes):
            title = " ".join(decode_text(raw).split())
            if title and title.lower() != "untitled":
                return title
    return ""


def _pdf_page_text(layout) -> str:
    """One page's text: pdfminer's text boxes in reading order as paragraphs, a box cut where the font size
    changes (a heading that layout analysis grouped with the paragraph under it), without a page-number
    paragraph at the top or bottom of the page."""
    from pdfminer.layout import LTTextBox, LTTextLine

    paragraphs: list[list[str]] = []
    for box in layout:
        if not isinstance(box, LTTextBox):
            continue
        size = None
        paragraphs.append([])
        for line in box:
            text = line.get_text().strip() if isinstance(line, LTTextLine) else ""
            if not text:
                continue
            line_size = _font_size(line)
            if paragraphs[-1] and size and line_size and abs(line_size - size) > 0.1 * size:
                paragraphs.append([])
            paragraphs[-1].append(text.replace("\f", " ").translate(_LIGATURES))
            size = line_size
    texts = ["\n".join(p) for p in paragraphs if p]
    if texts and _PAGE_NUMBER.match(texts[-1]):
        texts.pop()
    if texts and _PAGE_NUMBER.match(texts[0]):
        texts.pop(0)
    return "\n\n".join(texts)


def _font_size(line) -> float | None:
    """The most common character size of a text line (its body size; a drop capital or a symbol is rarer)."""
    from collections import Counter

    from pdfminer.layout import LTChar

    sizes = Counter(round(ch.size, 1) for ch in line if isinstance(ch, LTChar))
    return sizes.most_common(1)[0][0] if sizes else None


# ====================================================================================================== DOCX/PPTX
#: mammoth style map: Word's Title paragraph style is the document's title (mammoth leaves it a plain paragraph).
_DOCX_STYLES = "p[style-name='Title'] => h1:fresh"
_SLIDE = re.compile(r"^<!-- Slide number: (\d+) -->$", re.MULTILINE)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(?<![\\\w*])(\*{1,3})(?=[^\s*])(.+?)(?<=[^\s\\*])\1(?![\w*])")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
_MD_BLOCK = re.compile(r"^\s*(?:#{1,6}\s|\||[-*+]\s|\d{1,3}[.)]\s|```|~~~)")


def _read_office(data: bytes, suffix: str) -> Converted:
    if data.startswith(_OLE_MAGIC):
        raise Unreadable("password-protected (encrypted), or an old binary .doc/.ppt saved under this name; save "
                         f"it as {suffix} without a password")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise Unreadable(f"damaged or truncated (not a zip archive, which every {suffix} file is)")
    from markitdown import StreamInfo
    from markitdown.converters import DocxConverter, PptxConverter

    converter = DocxConverter() if suffix == ".docx" else PptxConverter()
    try:
        markdown = converter.convert(io.BytesIO(data), StreamInfo(extension=suffix), style_map=_DOCX_STYLES).markdown
    except Exception as exc:  # a damaged part of the archive fails inside mammoth / python-pptx / lxml
        raise Unreadable(f"damaged {suffix} file ({type(exc).__name__}: {_short(exc)})") from None
    markdown = _indent_tables(_plain_inline(markdown))
    if suffix == ".docx":
        return Converted(title="", pages=[markdown], paged=False, markdown=True)
    return Converted(title="", pages=_slides(markdown), paged=True, markdown=True)


def _plain_inline(markdown: str) -> str:
    """Markdown without images, link targets, emphasis markers and the backslashes markdownify puts before
    punctuation (``max\\_tokens``, ``2\\*3``): what is read, not how it is shown."""
    markdown = _IMAGE.sub("", markdown)
    markdown = _LINK.sub(r"\1", markdown)
    markdown = _EMPHASIS.sub(r"\2", markdown)
    return _ESCAPED.sub(r"\1", markdown)


def _indent_tables(markdown: str) -> str:
    """Markdown tables as indented blocks of their rows, without the separator row and rows of empty cells: an
    indented block is one code segment to the splitter, so a table stays whole in one chunk (or is cut at row
    boundaries when longer than the token cap) instead of a segment per row."""
    out = []
    for line in markdown.split("\n"):
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(not c or set(c) <= set("-: ") for c in cells):
                continue  # | --- | :--: | or a header row with nothing in it
            out.append("    | " + " | ".join(cells) + " |")
        else:
            out.append(line)
    return "\n".join(out)


def _slides(markdown: str) -> list[str]:
    """markitdown's PPTX markdown cut at its slide markers into one text per slide (slide n at index n - 1),
    with each plain line of the slide a list item and each line of its notes a paragraph (their ``### Notes:``
    label removed)."""
    parts = _SLIDE.split(markdown)  # [before, n1, text1, n2, text2, ...]
    slides: dict[int, str] = {}
    for number, text in zip(parts[1::2], parts[2::2]):
        lines = []
        notes = False
        for line in text.replace("\v", "\n").split("\n"):
            if line.strip() == "### Notes:":
                notes = True  # the speaker notes: prose paragraphs after the slide's text
                lines.append("")
            elif notes:
                lines += [line, ""]
            elif line.strip() and not _MD_BLOCK.match(line):
                lines.append(f"- {line.strip()}")
            else:
                lines.append(line)
        slides[int(number)] = "\n".join(lines).strip()
    return [slides.get(n, "") for n in range(1, max(slides, default=0) + 1)]


# ========================================================================================================= shared
@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise a library logger's level to ERROR for the ``with`` block (its warnings about damaged objects would
    otherwise print many lines per file)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _short(exc: BaseException, limit: int = 120) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or "no message"
    return text if len(text) <= limit else text[:limit - 3] + "..."

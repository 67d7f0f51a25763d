"""Document readers: a folder of ``.txt``/``.md``/``.rst``/``.html`` (and, with the ``documents`` extra,
``.pdf``/``.docx``/``.pptx``) files or a BEIR ``corpus.jsonl`` -> :class:`Document` records (id, title, plain text
with real newlines), the input of the ingest chunker.

* folder, read recursively (hidden files/folders skipped): ``doc_id`` is the file path relative to the folder
  (posix); the title is the first markdown ``#`` heading (or ``=`` setext heading), the first reStructuredText
  heading (a line underlined with ``= - * ~ ^ ...``) or the HTML ``<title>`` (else its first ``<h1>``). Markup
  becomes paragraphs that :func:`embedforge.retrieval.text.split_segments` understands: headings stand alone between blank
  lines, HTML ``<pre>`` becomes an indented code block.
* BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``) or a folder holding it; ``_id`` must be unique.

Documents are read one at a time (:func:`iter_documents`), plain-text files piece by piece, so memory does not
grow with the corpus or with one file's size. A document longer than :data:`SECTION_CHARS` characters becomes
several documents, its *sections* (``<doc_id>/section-0001``, ... cut at paragraph breaks where possible, same
title): a chunk's document is then a readable unit, and the document-level train/eval split can put the parts
of one huge file in different splits instead of all of it in one.

PDF, DOCX and PPTX files are converted by :mod:`embedforge.stages.ingest.documents`. A PDF or PPTX keeps its pages
(slides): its :class:`Document` holds them separated by :data:`PAGE_BREAK` with ``first_page`` set, so the chunker
cuts at page boundaries and each chunk carries its page; its sections are runs of whole pages. Such a file that
cannot be read (damaged, truncated, password-protected, empty, no text) is skipped with one log line and recorded
in ``unreadable``; without the extra installed they are all skipped with one line saying what to install.

Every text file must be UTF-8 (a BOM is allowed); a bad file or line raises :class:`~embedforge.errors.InputError`
naming it (and, for bytes that are not UTF-8, the line and column). A symbolic link in a corpus folder to a
file outside that folder is skipped and counted unless ``ingest.follow_external_symlinks`` is set; linked folders
are never entered.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

from embedforge.contracts import iter_jsonl, iter_text_lines
from embedforge.errors import InputError
from embedforge.retrieval.text import FENCE, indent, normalize_ws, split_sections
from embedforge.stages.ingest.documents import (
    DOCUMENT_SUFFIXES,
    EXTRA_HINT,
    Unreadable,
    missing_extra,
    read_document,
)

log = logging.getLogger(__name__)

BEIR_CORPUS = "corpus.jsonl"
#: Longest document in characters by default (``ingest.section_chars``); a longer one is split into sections (about
#: 50k tokens: cheap to tokenise).
SECTION_CHARS = 200_000


#: Between the pages of a paged document's text (the form feed: a page break in plain text).
PAGE_BREAK = "\f"


@dataclass
class Document:
    """One document: its id (relative path or BEIR ``_id``), title (may be empty) and plain text. A paged file's
    document (PDF, PPTX) has ``first_page``, the number of its text's first page, and its pages separated by
    :data:`PAGE_BREAK`."""

    doc_id: str
    title: str
    text: str
    first_page: int | None = None

    def pages(self) -> Iterator[tuple[int | None, str]]:
        """(page number, text) of each page; (None, the whole text) once for a document without pages."""
        if self.first_page is None:
            yield None, self.text
            return
        for number, text in enumerate(self.text.split(PAGE_BREAK), start=self.first_page):
            yield number, text


_RST_UNDERLINE = re.compile(r"^([=\-*~^\"'`#+:.])\1{2,}\s*$")


def _rst_normalise(raw: str) -> tuple[str, str]:
    """Remove heading over/underlines (keeping the heading as its own paragraph); return (title, text)."""
    lines = raw.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    title = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _RST_UNDERLINE.match(line) and i + 2 < len(lines) and lines[i + 1].strip() and _RST_UNDERLINE.match(lines[i + 2]):
            heading = lines[i + 1].strip()  # overlined + underlined title
            i += 3
        elif (line.strip() and indent(line) == 0 and not _RST_UNDERLINE.match(line)
              and _RST_UNDERLINE.match(nxt) and len(nxt.strip()) >= max(3, len(line.strip()) // 2)):
            heading = line.strip()
            i += 2
        else:
            out.append(line)
            i += 1
            continue
        title = title or heading
        out.extend(["", heading, ""])
    return title, "\n".join(out)


_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")


def _md_normalise(raw: str) -> tuple[str, str]:
    """Turn ``#`` and setext headings into heading paragraphs (outside fenced code); return (title, text)."""
    lines = raw.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    title = ""
    in_fence: str | None = None
    for idx, line in enumerate(lines):
        fence = FENCE.match(line)
        if fence:
            in_fence = None if in_fence == fence.group(1) else (in_fence or fence.group(1))
            out.append(line)
            continue
        if in_fence is None:
            m = _MD_HEADING.match(line)
            if m and m.group(2):
                heading = m.group(2)
                title = title or (heading if len(m.group(1)) == 1 else "")
                out.extend(["", heading, ""])
                continue
            if _MD_SETEXT.match(line) and out and out[-1].strip() and (idx < 2 or not lines[idx - 2].strip()):
                heading = out.pop().strip()
                title = title or (heading if line.strip().startswith("=") else "")
                out.extend(["", heading, ""])
                continue
        out.append(line)
    return title, "\n".join(out)


_HTML_BLOCKS = (
    "p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "li", "ul", "ol", "dl", "dt", "dd",
    "table", "tr", "td", "th", "blockquote", "figure", "figcaption", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "form",
)


def _html_normalise(raw: str) -> tuple[str, str]:
    """Visible text of an HTML page with block structure kept as paragraphs; ``<pre>`` becomes an indented code
    block; script/style/noscript/template dropped. Returns (title, text)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title = normalize_ws(soup.title.get_text()) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for pre in soup.find_all("pre"):
        code = pre.get_text()
        pre.replace_with("\n\n" + "\n".join("    " + ln for ln in code.strip("\n").split("\n")) + "\n\n")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    text = soup.get_text()
    # inside a paragraph, source line breaks are just spaces; keep the blank-line paragraph structure
    paras = re.split(r"\n\s*\n", text)
    cleaned = []
    for p in paras:
        if p.strip() and p.startswith("    ") and all(not ln.strip() or ln.startswith("    ") for ln in p.split("\n")):
            cleaned.append(p.rstrip())  # a <pre> block
        elif p.strip():
            cleaned.append(normalize_ws(p))
    if not title:
        h1 = soup.find("h1")
        title = normalize_ws(h1.get_text()) if h1 else ""
    return title, "\n\n".join(cleaned)


def _not_utf8(path: Path) -> InputError:
    """The error for a corpus file that is not UTF-8, naming its first bad line and byte (the file is scanned
    again, line by line, only on this error path)."""
    try:
        for _ in iter_text_lines(path):
            pass
    except InputError as exc:
        return InputError(f"{exc} or remove it from the corpus")
    return InputError(f"{path} is not UTF-8 text: re-encode it as UTF-8 or remove it from the corpus")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}; check that the file exists and is readable") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _text_blocks(path: Path, size: int = SECTION_CHARS) -> Iterator[str]:
    """A UTF-8 text file (BOM allowed) in blocks of ``size`` characters, read incrementally."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            while block := fh.read(size):
                yield block
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}; check that the file exists and is readable") from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def sectioned(doc_id: str, title: str, blocks: Iterable[str], section_chars: int = SECTION_CHARS
              ) -> Iterator[Document]:
    """One Document for a text of at most ``section_chars`` characters, else one per section (ids
    ``<doc_id>/section-0001``...); one empty Document for a blank text (ingest counts it as empty)."""
    sections = split_sections(blocks, section_chars)
    first, second = next(sections, None), next(sections, None)
    if second is None:
        yield Document(doc_id=doc_id, title=title, text=first or "")
        return
    for n, text in enumerate(chain([first, second], sections), start=1):
        yield Document(doc_id=f"{doc_id}/section-{n:04d}", title=title, text=text)


def paged(doc_id: str, title: str, pages: list[str], section_chars: int = SECTION_CHARS) -> Iterator[Document]:
    """One Document for a paged file (pages joined by :data:`PAGE_BREAK`, ``first_page`` 1), else, when longer
    than ``section_chars``, one per run of whole pages (``<doc_id>/section-0001``..., each with its first page)."""
    runs: list[tuple[int, list[str]]] = []
    size = 0
    for number, page in enumerate(pages, start=1):
        if not runs or (runs[-1][1] and size + len(page) > section_chars):
            runs.append((number, []))
            size = 0
        runs[-1][1].append(page.replace(PAGE_BREAK, "\n"))
        size += len(page)
    if len(runs) == 1:
        yield Document(doc_id=doc_id, title=title, text=PAGE_BREAK.join(runs[0][1]), first_page=1)
        return
    for n, (first, run) in enumerate(runs, start=1):
        yield Document(doc_id=f"{doc_id}/section-{n:04d}", title=title, text=PAGE_BREAK.join(run), first_page=first)


def _document_file(path: Path, doc_id: str, section_chars: int, unreadable: dict[str, str] | None
                   ) -> Iterator[Document]:
    """The documents of a PDF/DOCX/PPTX file; nothing (one log line, an entry in ``unreadable``) when it cannot
    be read."""
    try:
        converted = read_document(path)
    except Unreadable as exc:
        log.warning("%s: skipped: %s", path, exc)
        if unreadable is not None:
            unreadable[doc_id] = str(exc)
        return
    title, pages = converted.title, converted.pages
    if converted.markdown:
        normalised = [_md_normalise(p) for p in pages]
        title = title or next((t for t, _ in normalised if t), "")
        pages = [text for _, text in normalised]
    if converted.paged:
        yield from paged(doc_id, title, pages, section_chars)
    else:
        yield from sectioned(doc_id, title, pages, section_chars)


def iter_file(path: Path, doc_id: str, section_chars: int = SECTION_CHARS,
              unreadable: dict[str, str] | None = None) -> Iterator[Document]:
    """The documents of one file: PDF/DOCX/PPTX files are converted (an unreadable one is skipped and recorded
    in ``unreadable``), markup files are normalised whole (:func:`read_file`), plain text is read incrementally;
    each is split into sections when longer than ``section_chars``."""
    suffix = path.suffix.lower()
    if suffix in DOCUMENT_SUFFIXES:
        yield from _document_file(path, doc_id, section_chars, unreadable)
    elif suffix in (".html", ".htm", ".md", ".rst"):
        doc = read_file(path, doc_id)
        yield from sectioned(doc_id, doc.title, [doc.text], section_chars)
    else:
        yield from sectioned(doc_id, "", _text_blocks(path, min(section_chars, SECTION_CHARS)), section_chars)


def read_file(path: Path, doc_id: str) -> Document:
    """Read one supported file into a :class:`Document` (title + plain text).

    Args:
        path: The file.
        doc_id: Its id (path relative to the corpus folder).

    Raises:
        InputError: unreadable or not UTF-8.
    """
    raw = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        title, text = _html_normalise(raw)
    elif suffix == ".md":
        title, text = _md_normalise(raw)
    elif suffix == ".rst":
        title, text = _rst_normalise(raw)
    else:
        title, text = "", raw
    return Document(doc_id=doc_id, title=title, text=text)


def outside(path: Path, root: Path) -> bool:
    """Whether ``path`` (a symbolic link, typically) resolves to a file outside the folder ``root``."""
    try:
        return not path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return True


def _folder_documents(root: Path, extensions: list[str], section_chars: int = SECTION_CHARS,
                      follow_external_symlinks: bool = False, stats: dict[str, int] | None = None,
                      unreadable: dict[str, str] | None = None) -> tuple[Iterator[Document], int]:
    from tqdm.auto import tqdm

    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files: list[Path] = []
    skipped = external = 0
    for p in sorted(root.rglob("*")):  # linked folders are listed, never entered
        if not p.is_file():
            continue
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files/folders (.git, .DS_Store) are not documents and not worth counting
        if p.suffix.lower() not in exts:
            skipped += 1
        elif p.is_symlink() and not follow_external_symlinks and outside(p, root):
            external += 1  # a link must not pull a file from elsewhere on the machine into the corpus unnoticed
        else:
            files.append(p)
    if stats is not None:
        stats["external_symlinks_skipped"] = external
    if external:
        log.warning(
            "%s: skipped %d symbolic link(s) to files outside the corpus folder (set "
            "ingest.follow_external_symlinks=true to read them)", root, external)
    documents = [p for p in files if p.suffix.lower() in DOCUMENT_SUFFIXES]
    if documents and (missing := missing_extra()):
        files = [p for p in files if p.suffix.lower() not in DOCUMENT_SUFFIXES]
        kinds = "/".join(sorted({p.suffix.lower() for p in documents}))
        reason = f"reading {kinds} files needs {EXTRA_HINT} ({missing} is not installed)"
        log.warning("%s: skipped %d %s file(s): %s", root, len(documents), kinds, reason)
        if unreadable is not None:
            unreadable.update((p.relative_to(root).as_posix(), "the documents extra is not installed")
                              for p in documents)
        if not files:
            raise InputError(f"corpus folder {root} holds only {kinds} files ({len(documents)}) and {reason}; "
                             "install it, or add text documents")
    if not files:
        links = (f"; {external} symbolic link(s) to files outside it were skipped (set "
                 "ingest.follow_external_symlinks=true to read them)") if external else ""
        raise InputError(
            f"corpus folder {root} holds no supported files ({', '.join(sorted(exts))}){links}; add documents, "
            f"set ingest.extensions, or point at a BEIR corpus.jsonl"
        )
    docs = (d for p in tqdm(files, desc="ingest: files", unit="file", disable=None)
            for d in iter_file(p, p.relative_to(root).as_posix(), section_chars, unreadable))
    return docs, skipped


def _beir_documents(path: Path, section_chars: int = SECTION_CHARS) -> Iterator[Document]:
    from tqdm.auto import tqdm

    seen: dict[str, int] = {}
    for n, obj in tqdm(iter_jsonl(path), desc="ingest: documents", unit="doc", disable=None):
        doc_id = obj.get("_id")
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise InputError(f"{path}:{n}: missing or empty \"_id\" (each line needs \"_id\", \"title\", \"text\")")
        text, title = obj.get("text", ""), obj.get("title", "")
        if text is None:
            text = ""
        if title is None:
            title = ""
        if not isinstance(text, str):
            raise InputError(f"{path}:{n}: \"text\" must be a string, got {type(text).__name__}")
        if not isinstance(title, str):
            raise InputError(f"{path}:{n}: \"title\" must be a string, got {type(title).__name__}")
        if doc_id in seen:
            raise InputError(f"{path}:{n}: duplicate \"_id\" {doc_id!r} (first on line {seen[doc_id]}); ids must be unique")
        seen[doc_id] = n
        yield from sectioned(doc_id, normalize_ws(title), [text], section_chars)
    if not seen:
        raise InputError(f"{path} holds no documents; each line must be a JSON object with \"_id\", \"title\", \"text\"")


def iter_documents(corpus: str | Path, extensions: list[str], section_chars: int = SECTION_CHARS,
                   follow_external_symlinks: bool = False, stats: dict[str, int] | None = None,
                   unreadable: dict[str, str] | None = None) -> tuple[Iterator[Document], int, str]:
    """Read a corpus folder or BEIR corpus, one document at a time.

    Args:
        corpus: A folder of documents, a BEIR ``corpus.jsonl``, or a folder holding ``corpus.jsonl``.
        extensions: File suffixes read from a folder.
        section_chars: Longest document in characters; a longer one becomes sections.
        follow_external_symlinks: Read a folder's symbolic links to files outside it (else they are skipped).
        stats: Filled with ``external_symlinks_skipped`` (links not read) when given.
        unreadable: Filled, as the documents are read, with ``doc_id -> reason`` of each PDF/DOCX/PPTX file
            skipped because it cannot be read (or the ``documents`` extra is missing).

    Returns:
        (documents in deterministic order, read as iterated; number of skipped files; "folder"|"beir").

    Raises:
        InputError: missing path, no supported files (at once); unreadable file, malformed corpus line (while
        iterating).
    """
    path = Path(corpus).expanduser()
    if not path.exists():
        raise InputError(
            f"corpus {path} does not exist; pass a folder of documents (.txt/.md/.rst/.html/.pdf/.docx/.pptx) or a "
            "BEIR corpus.jsonl"
        )
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise InputError(f"corpus {path} is a single file; pass its folder, or a BEIR corpus.jsonl")
        return _beir_documents(path, section_chars), 0, "beir"
    if (path / BEIR_CORPUS).is_file():
        return _beir_documents(path / BEIR_CORPUS, section_chars), 0, "beir"
    docs, skipped = _folder_documents(path, extensions, section_chars, follow_external_symlinks, stats, unreadable)
    return docs, skipped, "folder"

"""Ingest: a folder of documents (or a BEIR ``corpus.jsonl``) -> sentence chunks with a document-level split.

Inputs
    * a folder, read recursively: ``.txt``, ``.md``, ``.rst``, ``.html``/``.htm`` (``IngestConfig.extensions``);
      ``doc_id`` is the file path relative to the folder (posix), the title is the first markdown ``#`` heading,
      the first reStructuredText heading (a line underlined with ``= - * ~ ^ ...``) or the HTML ``<title>``;
    * a BEIR corpus: ``corpus.jsonl`` (``_id``, ``title``, ``text``) or a folder holding it.

Chunking
    The text is cut into *segments* by :func:`split_segments`: prose sentences (a regex splitter that knows
    abbreviations, initials, decimals and the ``word . word`` style of tokenised corpora), code blocks (indented
    blocks, fenced blocks, symbol-dense lines — kept whole, never sentence-split) and headings (a heading always
    starts a new chunk). Segments are packed ``sentences_per_chunk`` at a time (headings are free), never past
    ``max_chunk_tokens`` tokens of the base model's tokenizer (special tokens included); a segment longer than
    that is cut at token boundaries. A chunk shorter than ``min_chunk_chars`` is merged into its neighbour
    (previous, else next) when the token cap allows. A document whose whole text is shorter than
    ``min_chunk_chars`` is KEPT as one chunk: dropping it would silently remove a retrievable document (and break
    qrels that point at it); it is counted as ``short_documents``. Empty documents are dropped (``empty_documents``).

Ids and split
    ``chunk_id = '<doc_id>#<position>'`` (position within the document, counted before de-duplication, so an id
    never depends on other documents). Exact duplicate chunks (whitespace-normalised) are dropped, the first in
    corpus order kept. A document is in ``eval`` when ``sha256(f"{seed}:{doc_id}")`` mapped to [0, 1) is below
    ``eval_fraction``: a document's split never changes when documents are added or removed. Two guarantees
    override the hash on degenerate draws: with >= 2 documents and ``eval_fraction > 0`` at least one document is
    eval (the lowest hash) and at least one is train (the highest hash).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from embedforge.config import IngestConfig
from embedforge.contracts import CHUNKS_FILE, Chunk, Manifest, StageTimer, iter_jsonl, write_jsonl
from embedforge.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BEIR_CORPUS = "corpus.jsonl"
SegmentKind = Literal["prose", "code", "heading"]


# ================================================================================================ segmentation
@dataclass
class Segment:
    """One unit of a document: a prose sentence, a code block or a heading. ``para`` groups sentences of one
    paragraph (they are joined with a space; different paragraphs with a blank line)."""

    text: str
    kind: SegmentKind = "prose"
    para: int = 0
    tokens: int = 0


# Words that end with a period without ending the sentence (compared lower-case, without the final period).
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs cf e.g i.e eg ie viz al fig figs eq eqs ref refs no nos vol vols pp
    ch sec approx dept est inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k a.m p.m
    ph.d resp min max avg op cit ed eds rev gen col lt sgt capt""".split()
)
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(\s+)")
_SENTENCE_START = re.compile(r"[A-Z0-9\"'“‘(\[*_`]")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_LINE = re.compile(
    r"::=|^\s*>>>|^\s*\$ |\{\s*$|^\s*}"
    r"|^\s*(?:def|class|if|elif|else|for|while|try|except\*?|finally|with|async|match|case)\b[^.]*:\s*$"
    r"|^\s*(?:import\s+[\w.]+\s*$|from\s+[\w.]+\s+import\b)"
    r"|^\s*[A-Za-z_][\w.\[\]]*\s*(?:[-+*/%&|^]|//|\*\*|<<|>>)?=\s*[^=\s]"
    r"|^\s*[A-Za-z_][\w.]*\(.*\)\s*$"
)
# weaker signs, trusted only for indented blocks (which in rst/markdown are usually code already)
_CODE_LINE_WEAK = re.compile(r"^\s*(?:\.\.\.\s|return\b|raise\b|yield\b|print\b|pass\s*$|#)|;\s*$")
_SYMBOLS = set("=<>{}[]()|;\\/&^%$#@~+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")


def normalize_ws(text: str) -> str:
    """Collapse all whitespace runs to one space and strip (the key of exact-duplicate detection)."""
    return " ".join(text.split())


def looks_like_code(line: str) -> bool:
    """A line that reads as code or grammar rather than prose (symbol-dense, ``::=``, ``x = y``, ``f(x)`` ...)."""
    s = line.strip()
    if not s:
        return False
    if _CODE_LINE.search(line):
        return True
    symbols = sum(ch in _SYMBOLS for ch in s)
    return len(s) >= 4 and symbols / len(s) > 0.15


_CONTINUATION = frozenset("a an the to of and or but is are as by with for in on from at into than that which".split())


def _is_heading_line(line: str) -> bool:
    s = line.strip()
    words = s.split()
    return (
        0 < len(words) <= 12
        and len(s) <= 100
        and s[-1] not in ".!?,;:"
        and "," not in s
        and words[-1].lower() not in _CONTINUATION
        and bool(_WORD.search(s))
        and not looks_like_code(s)
        and not _BULLET.match(s)
    )


def split_sentences(paragraph: str) -> list[str]:
    """Split one prose paragraph into sentences.

    A boundary is ``. ! ?`` (plus closing quotes/brackets) followed by whitespace and an upper-case letter, digit
    or opening quote/bracket, or — for lower-cased tokenised corpora — a period standing alone between spaces
    (``word . word``). Known abbreviations (``e.g.``, ``Dr.``, ``Fig.``), single-letter initials (``J. Smith``)
    and dotted acronyms (``U.S.``) never end a sentence.

    Args:
        paragraph: Text of one paragraph; newlines are treated as spaces.

    Returns:
        The sentences, whitespace-normalised, non-empty.
    """
    text = normalize_ws(paragraph)
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.start(1)  # sentence text ends before the whitespace
        nxt = text[m.end():m.end() + 1]
        if not nxt:
            break
        punct_start = m.start()
        standalone = punct_start > 0 and text[punct_start - 1] == " " and text[m.start():end].strip(".") == ""
        if not standalone:
            if not _SENTENCE_START.match(nxt):
                continue
            if text[m.start()] == ".":
                word = text[start:punct_start].rsplit(" ", 1)[-1].lstrip("\"'“‘([")
                low = word.lower()
                if low in ABBREVIATIONS or re.fullmatch(r"[A-Za-z]", word) or re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word):
                    continue
        sentence = text[start:end].strip()
        if sentence:
            out.append(sentence)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def split_segments(text: str) -> list[Segment]:
    """Cut plain text into prose sentences, code blocks and headings.

    Rules, line by line: fenced blocks (```` ``` ````/``~~~``) and indented blocks are code unless the indented
    block reads as prose (no code-looking line, ends with sentence punctuation); a symbol-dense line inside prose
    is a code segment of its own; a paragraph that is one short line without final punctuation is a heading;
    list items start new paragraphs; everything else is prose, split by :func:`split_sentences`. Chunk texts
    written by :func:`run` re-split into the same segments, so later stages (the offline generator) can use this.

    Args:
        text: Document text with real newlines (markup already removed).

    Returns:
        Segments in document order; ``para`` numbers paragraphs.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ").split("\n")
    segs: list[Segment] = []
    para = 0
    i = 0
    n = len(lines)
    prose: list[str] = []

    def flush_prose() -> None:
        nonlocal prose, para
        if not prose:
            return
        if len(prose) == 1 and _is_heading_line(prose[0]):
            segs.append(Segment(prose[0].strip(), "heading", para))
        else:
            # code-looking lines inside a prose paragraph become their own code segments
            buf: list[str] = []
            for ln in prose:
                if looks_like_code(ln) and not _WORD.fullmatch(ln.strip()):
                    if buf:
                        segs.extend(Segment(s, "prose", para) for s in split_sentences(" ".join(buf)))
                        buf = []
                        para += 1
                    segs.append(Segment(ln.rstrip(), "code", para))
                    para += 1
                else:
                    buf.append(ln)
            if buf:
                segs.extend(Segment(s, "prose", para) for s in split_sentences(" ".join(buf)))
        prose = []
        para += 1

    while i < n:
        line = lines[i]
        if not line.strip():
            flush_prose()
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            flush_prose()
            j = i + 1
            while j < n and not lines[j].strip().startswith(fence.group(1)):
                j += 1
            block = "\n".join(ln.rstrip() for ln in lines[i:min(j + 1, n)])
            segs.append(Segment(block, "code", para))
            para += 1
            i = j + 1
            continue
        if _indent(line) >= 2 and not prose and not _BULLET.match(line):
            # an indented block: collect it (blank lines inside it included)
            j = i
            block: list[str] = []
            while j < n and (not lines[j].strip() or _indent(lines[j]) >= 2):
                block.append(lines[j])
                j += 1
            trailing_blank = False
            while block and not block[-1].strip():
                block.pop()
                trailing_blank = True
            content = [ln for ln in block if ln.strip()]
            joined = " ".join(ln.strip() for ln in content)
            # an indented first line of a normal paragraph: the next line follows without a blank line
            continues = not trailing_blank and j < n and bool(lines[j].strip())
            code_lines = sum(1 for ln in content if looks_like_code(ln) or _CODE_LINE_WEAK.search(ln))
            prose_like = code_lines < max(1, 0.3 * len(content)) and (
                continues or (joined[-1:] in ".!?:" and len(_WORD.findall(joined)) >= 6)
            )
            if prose_like:
                for ln in block:
                    if ln.strip():
                        prose.append(ln.strip())
                    else:
                        flush_prose()
                if not continues:
                    flush_prose()
            else:
                segs.append(Segment("\n".join(ln.rstrip() for ln in block), "code", para))
                para += 1
            i = j
            continue
        if _BULLET.match(line) and prose:
            flush_prose()
        prose.append(line.strip())
        i += 1
    flush_prose()
    return segs


def join_segments(segs: list[Segment]) -> str:
    """Chunk text: sentences of one paragraph joined by a space, paragraphs/code/headings by a blank line."""
    parts: list[str] = []
    prev: Segment | None = None
    for s in segs:
        if prev is not None:
            same_para = prev.kind == s.kind == "prose" and prev.para == s.para
            parts.append(" " if same_para else "\n\n")
        parts.append(s.text)
        prev = s
    return "".join(parts)


# ====================================================================================================== readers
@dataclass
class Document:
    doc_id: str
    title: str
    text: str


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
        elif (line.strip() and _indent(line) == 0 and not _RST_UNDERLINE.match(line)
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
        fence = _FENCE.match(line)
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


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}; check that the file exists and is readable") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); re-encode it "
            f"(e.g. iconv -f latin1 -t utf-8) or remove it from the corpus"
        ) from None


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


def _folder_documents(root: Path, extensions: list[str]) -> tuple[list[Document], int]:
    from tqdm.auto import tqdm

    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files: list[Path] = []
    skipped = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files/folders (.git, .DS_Store) are not documents and not worth counting
        if p.suffix.lower() in exts:
            files.append(p)
        else:
            skipped += 1
    if not files:
        raise InputError(
            f"corpus folder {root} holds no supported files ({', '.join(sorted(exts))}); add documents, "
            f"set ingest.extensions, or point at a BEIR corpus.jsonl"
        )
    docs = [read_file(p, p.relative_to(root).as_posix()) for p in tqdm(files, desc="ingest: files", unit="file", disable=None)]
    return docs, skipped


def _beir_documents(path: Path) -> list[Document]:
    from tqdm.auto import tqdm

    docs: list[Document] = []
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
        docs.append(Document(doc_id=doc_id, title=normalize_ws(title), text=text))
    if not docs:
        raise InputError(f"{path} holds no documents; each line must be a JSON object with \"_id\", \"title\", \"text\"")
    return docs


def load_documents(corpus: str | Path, extensions: list[str]) -> tuple[list[Document], int, str]:
    """Read a corpus folder or BEIR corpus.

    Args:
        corpus: A folder of documents, a BEIR ``corpus.jsonl``, or a folder holding ``corpus.jsonl``.
        extensions: File suffixes read from a folder.

    Returns:
        (documents in deterministic order, number of skipped files, "folder"|"beir").

    Raises:
        InputError: missing path, no supported files, unreadable file, malformed corpus line.
    """
    path = Path(corpus).expanduser()
    if not path.exists():
        raise InputError(
            f"corpus {path} does not exist; pass a folder of .txt/.md/.rst/.html files or a BEIR corpus.jsonl"
        )
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise InputError(f"corpus {path} is a single file; pass its folder, or a BEIR corpus.jsonl")
        return _beir_documents(path), 0, "beir"
    if (path / BEIR_CORPUS).is_file():
        return _beir_documents(path / BEIR_CORPUS), 0, "beir"
    docs, skipped = _folder_documents(path, extensions)
    return docs, skipped, "folder"


# ====================================================================================================== chunking
def load_tokenizer(base_model: str) -> "PreTrainedTokenizerBase":
    """The base model's tokenizer (the chunk length cap is measured in its tokens)."""
    from transformers import AutoTokenizer

    from embedforge.encode import resolve_model_path
    from embedforge.errors import ConfigError

    path = resolve_model_path(base_model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of base model {base_model!r}: {exc}") from None


class Chunker:
    """Packs segments into chunks under a token cap.

    Args:
        cfg: Ingest settings.
        tokenizer: The base model's tokenizer.
    """

    def __init__(self, cfg: IngestConfig, tokenizer: "PreTrainedTokenizerBase"):
        self.cfg = cfg
        self.tok = tokenizer
        self.tok.model_max_length = 1 << 30  # we count tokens of long texts on purpose; silence the length warning
        self.budget = max(8, cfg.max_chunk_tokens - tokenizer.num_special_tokens_to_add())

    def _count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def _split_long(self, seg: Segment) -> list[Segment]:
        """Cut an over-long segment at token boundaries into pieces of <= budget tokens."""
        enc = self.tok(seg.text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        pieces: list[Segment] = []
        k = 0
        while k < len(offsets):
            cut = k + self.budget
            if cut < len(offsets):
                # prefer cutting before a token that starts a line (code) or a word (prose), so lines/words stay whole
                def boundary(j: int) -> bool:
                    gap = seg.text[offsets[j - 1][1]:offsets[j][0]]
                    return "\n" in gap if seg.kind == "code" else bool(gap)

                j = cut
                while j > k + 1 and not boundary(j):
                    j -= 1
                if j == k + 1 and seg.kind == "code":  # no line break in the window: fall back to a word start
                    j = cut
                    while j > k + 1 and not seg.text[offsets[j - 1][1]:offsets[j][0]]:
                        j -= 1
                cut = j if j > k + 1 else cut
            end = offsets[cut][0] if cut < len(offsets) else len(seg.text)
            start = offsets[k][0]
            if seg.kind == "code":
                # keep the indentation of the line the piece starts on: a re-split chunk must still see code
                line_start = seg.text.rfind("\n", 0, start) + 1
                if not seg.text[line_start:start].strip():
                    start = line_start
                piece = seg.text[start:end].rstrip()
            else:
                piece = seg.text[start:end].strip()
            if piece:
                pieces.append(Segment(piece, seg.kind, seg.para))
            k = cut
        for p, c in zip(pieces, self._count([p.text for p in pieces])):
            p.tokens = c
        return pieces

    def chunk(self, text: str) -> list[str]:
        """Chunk texts of one document (may be empty when the text is blank)."""
        segs = split_segments(text)
        for s, c in zip(segs, self._count([s.text for s in segs])):
            s.tokens = c
        units: list[Segment] = []
        for s in segs:
            units.extend(self._split_long(s) if s.tokens > self.budget else [s])

        groups: list[list[Segment]] = []
        cur: list[Segment] = []
        cur_tokens = 0
        for s in units:
            counted = sum(1 for u in cur if u.kind != "heading")
            content = counted > 0
            if cur and (
                (s.kind == "heading" and content)
                or (s.kind != "heading" and counted >= self.cfg.sentences_per_chunk)
                or cur_tokens + s.tokens + 1 > self.budget
            ):
                groups.append(cur)
                cur, cur_tokens = [], 0
            cur.append(s)
            cur_tokens += s.tokens + (1 if len(cur) > 1 else 0)
        if cur:
            groups.append(cur)
        groups = self._merge_short(groups)
        texts = [join_segments(g) for g in groups]
        # exactness guard: token counts of joined text can differ from the sum for some tokenizers
        final: list[str] = []
        for t, c in zip(texts, self._count(texts)):
            if c <= self.budget:
                final.append(t)
            else:
                final.extend(p.text for p in self._split_long(Segment(t)))
        return [t for t in final if t.strip()]

    def _tokens(self, group: list[Segment]) -> int:
        return sum(s.tokens for s in group) + max(0, len(group) - 1)

    def _merge_short(self, groups: list[list[Segment]]) -> list[list[Segment]]:
        min_chars = self.cfg.min_chunk_chars
        i = 0
        while i < len(groups) and len(groups) > 1:
            g = groups[i]
            if len(join_segments(g)) >= min_chars:
                i += 1
                continue
            if i > 0 and self._tokens(groups[i - 1]) + self._tokens(g) + 1 <= self.budget:
                groups[i - 1] = groups[i - 1] + g
                del groups[i]
                continue  # re-check the new neighbour at i (and the grown previous chunk is long enough)
            if i + 1 < len(groups) and self._tokens(g) + self._tokens(groups[i + 1]) + 1 <= self.budget:
                groups[i + 1] = g + groups[i + 1]
                del groups[i]
                continue
            i += 1  # cannot merge without breaking the token cap: keep it
        return groups


# ========================================================================================================= split
def split_score(seed: int, doc_id: str) -> float:
    """Deterministic position of a document in [0, 1); ``< eval_fraction`` means eval."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(doc_ids: list[str], eval_fraction: float, seed: int) -> dict[str, str]:
    """Document-level train/eval split, stable under adding/removing other documents.

    Args:
        doc_ids: Ids of the documents (non-empty ones).
        eval_fraction: Target share of eval documents.
        seed: Split seed.

    Returns:
        doc_id -> "train" | "eval".
    """
    scores = {d: split_score(seed, d) for d in doc_ids}
    splits = {d: ("eval" if s < eval_fraction else "train") for d, s in scores.items()}
    if len(doc_ids) >= 2 and eval_fraction > 0:
        if "eval" not in splits.values():
            splits[min(scores, key=lambda d: (scores[d], d))] = "eval"
        if "train" not in splits.values():
            splits[max(scores, key=lambda d: (scores[d], d))] = "train"
    return splits


# =========================================================================================================== run
def run(corpus: str | Path, out_dir: str | Path, cfg: IngestConfig, base_model: str) -> Manifest:
    """Ingest a corpus into ``chunks.jsonl`` + ``manifest.json``.

    Args:
        corpus: Folder of documents, BEIR ``corpus.jsonl``, or a folder holding it.
        out_dir: Output artifact folder (created).
        cfg: Chunking and split settings.
        base_model: Model folder or id whose tokenizer measures ``max_chunk_tokens``.

    Returns:
        The manifest; counts: documents, chunks, train_documents, eval_documents, train_chunks, eval_chunks,
        duplicate_chunks_dropped, skipped_files, empty_documents, short_documents, duplicate_documents (every
        chunk a duplicate of an earlier document's, so the document is absent from the output).

    Raises:
        InputError: missing/empty corpus, unreadable file, malformed corpus line, all documents empty.
    """
    from tqdm.auto import tqdm

    timer = StageTimer("ingest")
    docs, skipped, kind = load_documents(corpus, cfg.extensions)
    chunker = Chunker(cfg, load_tokenizer(base_model))

    per_doc: list[tuple[Document, list[str]]] = []
    empty = short = 0
    for doc in tqdm(docs, desc="ingest: chunking", unit="doc", disable=None):
        texts = chunker.chunk(doc.text)
        if not texts:
            empty += 1
            continue
        if len(texts) == 1 and len(texts[0]) < cfg.min_chunk_chars:
            short += 1
        per_doc.append((doc, texts))
    if not per_doc:
        raise InputError(f"all {len(docs)} documents in {corpus} are empty (no text after markup removal); nothing to chunk")

    splits = assign_splits([d.doc_id for d, _ in per_doc], cfg.eval_fraction, cfg.seed)
    chunks: list[Chunk] = []
    seen: set[str] = set()
    dropped = 0
    for doc, texts in per_doc:
        for pos, text in enumerate(texts):
            key = normalize_ws(text)
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            chunks.append(Chunk(chunk_id=f"{doc.doc_id}#{pos}", doc_id=doc.doc_id, text=text, title=doc.title,
                                position=pos, split=splits[doc.doc_id]))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / CHUNKS_FILE, chunks)
    doc_splits = {c.doc_id: c.split for c in chunks}
    fully_duplicate = len(per_doc) - len(doc_splits)
    counts = {
        "documents": len(doc_splits),
        "chunks": len(chunks),
        "train_documents": sum(1 for s in doc_splits.values() if s == "train"),
        "eval_documents": sum(1 for s in doc_splits.values() if s == "eval"),
        "train_chunks": sum(1 for c in chunks if c.split == "train"),
        "eval_chunks": sum(1 for c in chunks if c.split == "eval"),
        "duplicate_chunks_dropped": dropped,
        "skipped_files": skipped,
        "empty_documents": empty,
        "short_documents": short,
        "duplicate_documents": fully_duplicate,
    }
    log.info("ingest: %s", counts)
    return timer.write_manifest(out, counts=counts, inputs={"corpus": str(corpus)}, config=cfg,
                                corpus_format=kind, base_model=base_model)

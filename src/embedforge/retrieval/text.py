"""Text utilities shared by the stages: whitespace normalisation, the query key, code detection, and the
sentence/segment splitter.

:func:`split_segments` cuts plain text into *segments*: prose sentences (:func:`split_sentences`, a regex
splitter that knows abbreviations, initials, decimals and the ``word . word`` style of tokenised corpora), code
blocks (indented blocks, fenced blocks, symbol-dense lines — kept whole, never sentence-split) and headings.
:func:`join_segments` writes segments back as chunk text, and a chunk text re-splits into the same segments, so
the ingest chunker, the offline generator and the LLM generator all see one document structure.

:func:`normalize_ws` is the key of exact-duplicate chunk detection; :func:`query_key` the key under which two
queries count as the same (de-duplication in SDG, uniqueness in validation); :func:`is_blank` says whether a text
shows nothing at all (Unicode spaces and zero-width characters included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

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
#: A markdown code fence line (group 1: the fence, ```` ``` ```` or ``~~~``).
FENCE = re.compile(r"^\s*(```|~~~)")
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


# Characters that show nothing but are not whitespace to str.isspace(): format characters (category Cf: zero-width
# space U+200B, joiners, word joiner U+2060, the BOM U+FEFF, soft hyphen ...) and letters/symbols drawn as blanks.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _invisible(ch: str) -> bool:
    import unicodedata

    return ch in _BLANK_LOOKING or (not ch.isspace() and unicodedata.category(ch) in _INVISIBLE_CATEGORIES)


def visible_text(text: str) -> str:
    """``text`` without the characters that show nothing and are not whitespace (zero-width space U+200B, joiners,
    BOM U+FEFF, control characters, blank-looking fillers such as U+3164); whitespace is kept."""
    return "".join(ch for ch in text if not _invisible(ch))


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: empty, or only whitespace (NBSP U+00A0, EM SPACE U+2003 ... included),
    control and format characters (zero-width space U+200B, BOM U+FEFF) and blank-looking fillers (U+3164, U+2800).
    Such a query is as empty as ``""``."""
    return not visible_text(text).strip()


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


def indent(line: str) -> int:
    """Width of the leading spaces/tabs of a line."""
    return len(line) - len(line.lstrip(" \t"))


def split_segments(text: str) -> list[Segment]:
    """Cut plain text into prose sentences, code blocks and headings.

    Rules, line by line: fenced blocks (```` ``` ````/``~~~``) and indented blocks are code unless the indented
    block reads as prose (no code-looking line, ends with sentence punctuation); a symbol-dense line inside prose
    is a code segment of its own; a paragraph that is one short line without final punctuation is a heading;
    list items start new paragraphs; everything else is prose, split by :func:`split_sentences`. Chunk texts
    written by :func:`embedforge.stages.ingest.run` re-split into the same segments, so later stages (the offline
    generator) can use this.

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
        fence = FENCE.match(line)
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
        if indent(line) >= 2 and not prose and not _BULLET.match(line):
            # an indented block: collect it (blank lines inside it included)
            j = i
            block: list[str] = []
            while j < n and (not lines[j].strip() or indent(lines[j]) >= 2):
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


def _cut_point(text: str, max_chars: int) -> int:
    """Where to end a section of ``text`` (longer than ``max_chars``): after the last paragraph break in the
    window's second half, else the last line break, sentence end or space there, else at ``max_chars``."""
    for sep in ("\n\n", "\n", ". ", " "):
        k = text.rfind(sep, max_chars // 2, max_chars)
        if k != -1:
            return k + len(sep)
    return max_chars


def split_sections(blocks: Iterable[str], max_chars: int) -> Iterator[str]:
    """Re-cut a stream of text blocks (a file read piece by piece, or one whole text) into sections of at most
    ``max_chars`` characters that end at paragraph breaks where possible; blank sections are skipped.

    Holds at most one section plus one block in memory, so a document of any size is read in bounded memory.
    """
    buf = ""
    for block in blocks:
        buf += block
        while len(buf) > max_chars:
            cut = _cut_point(buf, max_chars)
            if buf[:cut].strip():
                yield buf[:cut]
            buf = buf[cut:]
    if buf.strip():
        yield buf


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



def query_key(query: str) -> str:
    """Key under which two queries count as duplicates (case- and whitespace-insensitive)."""
    return normalize_ws(query).casefold()

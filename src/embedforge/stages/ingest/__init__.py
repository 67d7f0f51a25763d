"""Ingest: a folder of documents (or a BEIR ``corpus.jsonl``) -> sentence chunks with a document-level split.

Inputs
    Read one document at a time by :func:`embedforge.stages.ingest.readers.iter_documents`: a folder of ``.txt``, ``.md``,
    ``.rst``, ``.html``/``.htm`` and (with the ``documents`` extra) ``.pdf``, ``.docx``, ``.pptx`` files
    (``IngestConfig.extensions``), or a BEIR corpus. A PDF/DOCX/PPTX file that cannot be read (damaged, truncated,
    password-protected, no text, or the extra missing) is skipped with one log line, counted as
    ``unreadable_files`` and named with its reason in the manifest's result. A document longer than
    ``IngestConfig.section_chars`` arrives as several documents (its sections), so it is split by
    section between train and eval. Chunks are written as they are made: memory stays bounded by the largest
    markup file (plain text is read piece by piece), not by the corpus.

Chunking
    The text is cut into *segments* by :func:`embedforge.retrieval.text.split_segments` (prose sentences, code blocks kept
    whole, headings; a heading always starts a new chunk). Segments are packed ``sentences_per_chunk`` at a time
    (headings are free), never past ``max_chunk_tokens`` tokens of the base model's tokenizer (special tokens
    included); a segment longer than that is cut at token boundaries. A chunk shorter than ``min_chunk_chars`` is
    merged into its neighbour (previous, else next) when the token cap allows. A paged document (PDF pages,
    PPTX slides) is chunked page by page: a chunk never spans two pages and carries its page number
    (``Chunk.page``). A document whose whole text is
    shorter than ``min_chunk_chars`` is KEPT as one chunk: dropping it would silently remove a retrievable
    document (and break qrels that point at it); it is counted as ``short_documents``. Empty documents are dropped
    (``empty_documents``).

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
from pathlib import Path
from typing import TYPE_CHECKING

from embedforge.config import IngestConfig
from embedforge.contracts import CHUNKS_FILE, Chunk, Manifest, StageTimer
from embedforge.errors import InputError
from embedforge.retrieval.text import (
    Segment,
    join_segments,
    normalize_ws,
    split_segments,
)
from embedforge.stages.ingest.readers import iter_documents

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


# ====================================================================================================== chunking
def load_tokenizer(base_model: str) -> "PreTrainedTokenizerBase":
    """The base model's tokenizer (the chunk length cap is measured in its tokens)."""
    from transformers import AutoTokenizer

    from embedforge.errors import ConfigError
    from embedforge.retrieval.encode import resolve_model_path

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
        duplicate_chunks_dropped, skipped_files, external_symlinks_skipped (links to files outside the corpus
        folder, not read unless ``follow_external_symlinks``), unreadable_files (PDF/DOCX/PPTX files skipped:
        damaged, encrypted, no text, or the ``documents`` extra missing; each with its reason in the result's
        ``unreadable_files``), empty_documents, short_documents, duplicate_documents (every chunk a duplicate of
        an earlier document's, so the document is absent from the output).

    Raises:
        InputError: missing/empty corpus, unreadable text file, malformed corpus line, no document with text
        (all empty or unreadable).
    """
    import json

    from tqdm.auto import tqdm

    timer = StageTimer("ingest")
    scan: dict[str, int] = {}
    unreadable: dict[str, str] = {}
    docs, skipped, kind = iter_documents(corpus, cfg.extensions, cfg.section_chars,
                                         follow_external_symlinks=cfg.follow_external_symlinks, stats=scan,
                                         unreadable=unreadable)
    chunker = Chunker(cfg, load_tokenizer(base_model))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{CHUNKS_FILE}.partial"

    # One pass, one document in memory: chunks are written as they are made, with the split from the document's
    # hash; only the ids of documents with text and the digests of chunks seen (for de-duplication) are kept.
    chunked: dict[str, int] = {}  # doc_id -> chunks written (0: every chunk a duplicate)
    seen: set[bytes] = set()
    read = empty = short = dropped = 0
    with partial.open("w", encoding="utf-8") as fh:
        for doc in tqdm(docs, desc="ingest: chunking", unit="doc", disable=None):
            read += 1
            texts: list[str] = []
            pages: list[int | None] = []
            for page, page_text in doc.pages():
                page_chunks = chunker.chunk(page_text)
                texts.extend(page_chunks)
                pages.extend([page] * len(page_chunks))
            if not texts:
                empty += 1
                continue
            if len(texts) == 1 and len(texts[0]) < cfg.min_chunk_chars:
                short += 1
            split = "eval" if split_score(cfg.seed, doc.doc_id) < cfg.eval_fraction else "train"
            chunked[doc.doc_id] = 0
            for pos, text in enumerate(texts):
                key = hashlib.blake2b(normalize_ws(text).encode("utf-8"), digest_size=16).digest()
                if key in seen:
                    dropped += 1
                    continue
                seen.add(key)
                chunked[doc.doc_id] += 1
                fh.write(Chunk(chunk_id=f"{doc.doc_id}#{pos}", doc_id=doc.doc_id, text=text, title=doc.title,
                               position=pos, split=split, page=pages[pos]).model_dump_json(exclude_none=True) + "\n")
    if unreadable:
        log.warning("ingest: skipped %d unreadable file(s): %s", len(unreadable), _listing(unreadable))
    if not chunked:
        partial.unlink()
        if unreadable and not read:
            raise InputError(f"no document in {corpus} could be read: {len(unreadable)} file(s) skipped "
                             f"({_listing(unreadable)}); fix or replace them, or add other documents")
        skipped_too = f", and {len(unreadable)} file(s) could not be read ({_listing(unreadable)})" if unreadable else ""
        raise InputError(f"all {read} documents in {corpus} are empty (no text after markup removal){skipped_too}; "
                         "nothing to chunk")

    splits = assign_splits(list(chunked), cfg.eval_fraction, cfg.seed)
    moved = {d for d, s in splits.items() if s != ("eval" if split_score(cfg.seed, d) < cfg.eval_fraction else "train")}
    if moved:  # the split's guarantees (>= 1 train and >= 1 eval document) moved a document: rewrite its chunks
        with partial.open(encoding="utf-8") as src, (out / CHUNKS_FILE).open("w", encoding="utf-8") as dst:
            for line in src:
                row = json.loads(line)
                row["split"] = splits[row["doc_id"]]
                dst.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.unlink()
    else:
        partial.replace(out / CHUNKS_FILE)
    doc_splits = {d: splits[d] for d, n in chunked.items() if n}
    chunk_splits = [(splits[d], n) for d, n in chunked.items()]
    counts = {
        "documents": len(doc_splits),
        "chunks": sum(n for _, n in chunk_splits),
        "train_documents": sum(1 for s in doc_splits.values() if s == "train"),
        "eval_documents": sum(1 for s in doc_splits.values() if s == "eval"),
        "train_chunks": sum(n for s, n in chunk_splits if s == "train"),
        "eval_chunks": sum(n for s, n in chunk_splits if s == "eval"),
        "duplicate_chunks_dropped": dropped,
        "skipped_files": skipped,
        "external_symlinks_skipped": scan.get("external_symlinks_skipped", 0),
        "unreadable_files": len(unreadable),
        "empty_documents": empty,
        "short_documents": short,
        "duplicate_documents": len(chunked) - len(doc_splits),
    }
    log.info("ingest: %s", counts)
    return timer.write_manifest(out, counts=counts, inputs={"corpus": str(corpus)}, config=cfg,
                                corpus_format=kind, base_model=base_model, unreadable_files=unreadable)


def _listing(unreadable: dict[str, str], limit: int = 5) -> str:
    """``a.pdf (why); b.docx (why)`` for the first ``limit`` skipped files, then how many more."""
    names = [f"{name} ({why})" for name, why in list(unreadable.items())[:limit]]
    more = f"; and {len(unreadable) - limit} more" if len(unreadable) > limit else ""
    return "; ".join(names) + more

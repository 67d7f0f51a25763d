"""Offline (no-LLM) pair generator: inverse cloze task + title queries.

Methods
    * **Inverse cloze task** (ICT; Lee, Chang & Toutanova 2019, *Latent Retrieval for Weakly Supervised Open
      Domain Question Answering*): a sentence of a chunk is the query and the chunk is its positive. With
      probability ``ict_remove_prob`` the sentence is cut out of the *training* positive
      (``Pair.positive_text``), so the model must match meaning rather than copy words; eval pairs keep the chunk
      as it is in the corpus (``positive_text=None``) — so an eval query would trivially find the chunk it was
      copied from. Eval ICT pairs therefore **mask their source chunk** (``Pair.exclude_chunk_ids``) and are judged
      per document: the query must find its document through the document's *other* chunks (relevance
      ``document``). Only documents of a single chunk keep the plain, lexically easy chunk-level eval pair.
      Eligible sentences: prose (not a heading or code line), ``min_query_words`` .. ``MAX_QUERY_WORDS`` words and
      ``MIN_QUERY_CHARS`` .. ``MAX_QUERY_CHARS`` characters, ending with ``. ! ?``, leaving at least
      ``min_query_words`` words of context in the chunk.
    * **Title queries**: a meaningful document title (>= 2 words, at most ``MAX_QUERY_WORDS`` words and
      ``MAX_QUERY_CHARS`` characters, not file-name-like, not the whole text) is a
      query whose positive is the whole document (``relevance="document"``, ``positive_doc_ids``). Where the
      document repeats its title (a heading, or the first sentence of an abstract) a *training* title pair instead
      names that chunk with the title cut out (``positive_text``; ``title_strip``), for the same reason inverse
      cloze removes its sentence: a positive that contains the query verbatim teaches copying, not meaning.

Everything is seeded per chunk/document (``random.Random(f"{seed}:{chunk_id}")``), so a chunk's pairs do not
depend on other chunks; duplicate queries (case/whitespace-insensitive) are skipped; ``max_pairs`` is spread
round-robin over documents (each document's candidates in a seeded random order, so a tight cap samples
title and inverse-cloze pairs alike).

Inputs/outputs
    ============  =========================================================================================
    input         chunks of ONE split (``Chunk`` records)
    output        ``Pair`` records of that split, ``source`` ``offline/ict`` or ``offline/title``
    ============  =========================================================================================
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from embedforge.config import ValidateConfig
from embedforge.contracts import Chunk, Pair
from embedforge.contracts.policy import SOURCE_PREFIX
from embedforge.retrieval.text import (
    is_blank,
    join_segments,
    looks_like_code,
    normalize_ws,
    query_key,
    split_segments,
)

if TYPE_CHECKING:
    from embedforge.config import SdgConfig
    from embedforge.contracts import Split

MAX_QUERY_WORDS = 64
#: Longest query in characters the generator makes: the validate stage's defaults (validate.min_query_chars,
#: validate.max_query_chars) bound what it accepts, and a generated query must never be refused by them — a
#: 100 KB title or a 64-"word" sentence of URLs would otherwise end the run at validation.
MIN_QUERY_CHARS = ValidateConfig.model_fields["min_query_chars"].default
MAX_QUERY_CHARS = min(1000, ValidateConfig.model_fields["max_query_chars"].default)
SOURCE_ICT = f"{SOURCE_PREFIX}ict"
SOURCE_TITLE = f"{SOURCE_PREFIX}title"
_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)\]]*$")
_FILENAME_LIKE = re.compile(r"^[\w.\-/\\]+$")


def query_fits(query: str) -> bool:
    """Whether ``query`` is a query the validate stage accepts with its default settings: not blank (Unicode
    spaces and zero-width characters count as blank) and :data:`MIN_QUERY_CHARS` .. :data:`MAX_QUERY_CHARS`
    characters long."""
    return not is_blank(query) and MIN_QUERY_CHARS <= len(query) <= MAX_QUERY_CHARS


def meaningful_title(title: str, doc_id: str, doc_text: str) -> bool:
    """Whether a title makes a usable document-level query.

    Args:
        title: The document title.
        doc_id: The document id (a title equal to it, or to its file stem, is not a query).
        doc_text: Whitespace-normalised document text (a title equal to it carries no extra signal).
    """
    t = normalize_ws(title)
    if not t:
        return False
    words = [w for w in t.split() if re.search(r"[^\W\d_]", w)]
    if len(words) < 2:
        return False
    if _FILENAME_LIKE.match(t) and not re.search(r"\s", t):
        return False
    stem = PurePosixPath(doc_id).stem
    if query_key(t) in {query_key(doc_id), query_key(stem), query_key(stem.replace("-", " ").replace("_", " "))}:
        return False
    return query_key(t) != query_key(doc_text)


class OfflineGenerator:
    """Inverse-cloze and title pairs, no model calls.

    Args:
        cfg: ``SdgConfig`` (queries_per_chunk, title_queries, ict_remove_prob, min_query_words, max_pairs, seed).
    """

    name = "offline"

    def __init__(self, cfg: "SdgConfig"):
        self.cfg = cfg
        self._stats: dict[str, int] = {
            "chunks_seen": 0,
            "chunks_without_candidate": 0,
            "ict_candidates": 0,
            "ict_pairs": 0,
            "ict_positive_removed": 0,
            "title_pairs": 0,
            "title_stripped": 0,
            "titles_not_meaningful": 0,
            "titles_too_long": 0,
            "duplicate_queries_skipped": 0,
            "pairs_over_cap_dropped": 0,
        }

    # ------------------------------------------------------------------------------------------- candidates
    def _ict_pairs(self, chunk: Chunk, split: "Split", doc_chunks: int = 1) -> list[Pair]:
        cfg = self.cfg
        segs = split_segments(chunk.text)
        eligible = []
        for i, s in enumerate(segs):
            n_words = len(s.text.split())
            if (
                s.kind == "prose"
                and cfg.min_query_words <= n_words <= MAX_QUERY_WORDS
                and query_fits(s.text)
                and _ENDS_SENTENCE.search(s.text)
                and not looks_like_code(s.text)
            ):
                rest_words = sum(len(o.text.split()) for j, o in enumerate(segs) if j != i)
                if rest_words >= cfg.min_query_words:
                    eligible.append(i)
        self._stats["ict_candidates"] += len(eligible)
        if not eligible:
            self._stats["chunks_without_candidate"] += 1
            return []
        rng = random.Random(f"{cfg.seed}:{chunk.chunk_id}")
        picked = sorted(rng.sample(eligible, min(cfg.queries_per_chunk, len(eligible))))
        pairs = []
        for k, i in enumerate(picked):
            remove = rng.random() < cfg.ict_remove_prob
            positive_text = None
            if split == "train" and remove:
                positive_text = join_segments([s for j, s in enumerate(segs) if j != i])
            masked = split == "eval" and doc_chunks > 1
            pairs.append(Pair(
                query_id=f"ict:{chunk.chunk_id}:{k}",
                query=segs[i].text,
                positive_chunk_ids=[] if masked else [chunk.chunk_id],
                positive_doc_ids=[chunk.doc_id],
                relevance="document" if masked else "chunk",
                split=split,
                positive_text=positive_text,
                exclude_chunk_ids=[chunk.chunk_id] if masked else [],
                source=SOURCE_ICT,
                meta={"method": "inverse_cloze", "sentence_index": i, "sentence_removed": positive_text is not None,
                      "source_chunk_masked": masked},
            ))
        return pairs

    def _title_pair(self, doc_id: str, chunks: list[Chunk], split: "Split") -> Pair | None:
        title = chunks[0].title
        if not title:
            return None
        doc_text = normalize_ws(" ".join(c.text for c in chunks))
        if not meaningful_title(title, doc_id, doc_text):
            self._stats["titles_not_meaningful"] += 1
            return None
        if not query_fits(normalize_ws(title)) or len(title.split()) > MAX_QUERY_WORDS:
            self._stats["titles_too_long"] += 1  # a heading-less page's first paragraph, a mangled <title> ...
            return None
        if split == "train" and self.cfg.title_strip:
            stripped = _strip_title(title, chunks, self.cfg.min_query_words)
            if stripped is not None:
                chunk, rest = stripped
                return Pair(
                    query_id=f"title:{doc_id}", query=normalize_ws(title), positive_chunk_ids=[chunk.chunk_id],
                    positive_doc_ids=[doc_id], relevance="chunk", split=split, positive_text=rest,
                    source=SOURCE_TITLE, meta={"method": "title", "title_removed_from_positive": True},
                )
        return Pair(
            query_id=f"title:{doc_id}",
            query=normalize_ws(title),
            positive_doc_ids=[doc_id],
            relevance="document",
            split=split,
            source=SOURCE_TITLE,
            meta={"method": "title"},
        )

    # ------------------------------------------------------------------------------------------------- API
    def generate(self, chunks: list[Chunk], split: "Split", max_pairs: int | None = None) -> list[Pair]:
        """Pairs for the chunks of one split.

        Args:
            chunks: Chunks of one split, in corpus order.
            split: Their split; every pair gets it.
            max_pairs: Cap for this call (default ``cfg.max_pairs``), spread round-robin over documents.

        Returns:
            Pairs grouped by document (seeded order within a document); query ids ``ict:<chunk_id>:<k>`` / ``title:<doc_id>``.
        """
        cap = self.cfg.max_pairs if max_pairs is None else max_pairs
        by_doc: OrderedDict[str, list[Chunk]] = OrderedDict()
        for c in chunks:
            by_doc.setdefault(c.doc_id, []).append(c)

        seen: set[str] = set()
        per_doc: list[list[Pair]] = []
        for doc_id, doc_chunks in by_doc.items():
            candidates: list[Pair] = []
            if self.cfg.title_queries:
                tp = self._title_pair(doc_id, doc_chunks, split)
                if tp is not None:
                    candidates.append(tp)
            self._stats["chunks_seen"] += len(doc_chunks)
            if self.cfg.queries_per_chunk > 0:
                for c in doc_chunks:
                    candidates.extend(self._ict_pairs(c, split, doc_chunks=len(doc_chunks)))
            kept = []
            for p in candidates:
                key = query_key(p.query)
                if key in seen:
                    self._stats["duplicate_queries_skipped"] += 1
                    continue
                seen.add(key)
                kept.append(p)
            # Seeded per document: a cap below the candidate count samples titles and inverse-cloze pairs alike.
            random.Random(f"{self.cfg.seed}:{doc_id}").shuffle(kept)
            per_doc.append(kept)

        chosen = spread_cap(per_doc, cap)
        self._stats["pairs_over_cap_dropped"] += sum(map(len, per_doc)) - len(chosen)
        for p in chosen:
            self._stats["ict_pairs" if p.source == SOURCE_ICT else "title_pairs"] += 1
            if p.positive_text is not None:
                self._stats["ict_positive_removed" if p.source == SOURCE_ICT else "title_stripped"] += 1
        return chosen

    def stats(self) -> dict[str, int | float]:
        """Counters accumulated over all ``generate`` calls."""
        return dict(self._stats)


def _strip_title(title: str, chunks: list[Chunk], min_words: int) -> tuple[Chunk, str] | None:
    """The first chunk that repeats the title as one of its segments (a heading, or a first sentence as in many
    abstracts), and that chunk's text without it — or None when no chunk repeats the title or too little is left.

    A title query trained against a positive that contains the title verbatim teaches the model to copy words, the
    same shortcut inverse cloze avoids by removing its sentence."""
    key = query_key(title)
    for c in chunks:
        segs = split_segments(c.text)
        keep = [s for s in segs if query_key(s.text) != key]
        if len(keep) < len(segs):
            rest = join_segments(keep)
            return (c, rest) if len(rest.split()) >= min_words else None
    return None


def spread_cap(per_doc: list[list[Pair]], cap: int) -> list[Pair]:
    """At most ``cap`` pairs taken round-robin over documents, returned in document order.

    Args:
        per_doc: Candidate pairs grouped by document, each group in preference order.
        cap: Maximum pairs returned.
    """
    total = sum(map(len, per_doc))
    if total <= cap:
        return [p for group in per_doc for p in group]
    take = [0] * len(per_doc)
    left = cap
    rnd = 0
    while left > 0:
        progressed = False
        for d, group in enumerate(per_doc):
            if left == 0:
                break
            if rnd < len(group):
                take[d] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
        rnd += 1
    return [p for d, group in enumerate(per_doc) for p in group[:take[d]]]

"""Input files as users really have them, written here byte for byte: text that is not UTF-8 in every reader,
symbolic links out of the corpus folder, queries made of Unicode blanks, and documents whose title is a whole page.

Each fault is one ``InputError``/``ValidationFailed`` line naming the file and line (or the rows) and what to do —
never ``UnicodeDecodeError``, never a blank query trained on, never a file from elsewhere read unnoticed, never a
generated query its own validator refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedforge.config import IngestConfig, SdgConfig, ValidateConfig
from embedforge.contracts import (
    iter_jsonl,
    read_chunks,
    read_json,
    read_pairs,
    write_jsonl,
)
from embedforge.errors import InputError, ValidationFailed
from embedforge.stages import ingest, validate

#: "café" with its é as the single Latin-1 byte 0xE9: what a Windows editor or an old export writes.
LATIN1 = "caf\u00e9".encode("latin-1")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _one_line_naming(exc: BaseException, path: Path, line: int, column: int) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: not UTF-8 text (byte 0xe9 at column {column}): re-encode the file as "
                          "UTF-8"), msg
    return msg


# ---------------------------------------------------------------------------------------------- not UTF-8
def test_beir_corpus_line_that_is_not_utf8_names_file_line_and_fix(tmp_path, base_model):
    path = _write(tmp_path / "beir" / "corpus.jsonl",
                  b'{"_id": "d1", "title": "", "text": "Fine text here."}\n'
                  b'{"_id": "d2", "title": "", "text": "' + LATIN1 + b' au lait."}\n')
    with pytest.raises(InputError) as err:
        ingest.run(path, tmp_path / "out", IngestConfig(), base_model=base_model)
    msg = _one_line_naming(err.value, path, 2, 40)
    assert "iconv -f latin1 -t utf-8" in msg


def test_folder_document_that_is_not_utf8_names_its_line(tmp_path, base_model):
    corpus = tmp_path / "docs"
    good = b"A fine first line of text.\nAnother good one.\n"
    txt = _write(corpus / "notes.txt", good + b"Third line: " + LATIN1 + b".\n")
    md = _write(corpus / "guide.md", b"# Guide\n\n" + LATIN1 + b" menu.\n")
    with pytest.raises(InputError) as err:
        ingest.run(corpus, tmp_path / "out", IngestConfig(), base_model=base_model)
    msg = _one_line_naming(err.value, md, 3, 4)  # guide.md comes first (sorted), read whole (markup)
    assert msg.endswith("or remove it from the corpus")
    md.unlink()
    with pytest.raises(InputError) as err:
        ingest.run(corpus, tmp_path / "out", IngestConfig(), base_model=base_model)
    _one_line_naming(err.value, txt, 3, 16)  # plain text is read in blocks: the line is found all the same


def test_pairs_file_that_is_not_utf8_names_its_line(tmp_path, chunks_dir):
    from embedforge.stages.sdg.byo import load_pairs

    doc = read_chunks(chunks_dir)[0].doc_id
    path = _write(tmp_path / "pairs.jsonl", json.dumps({"query": "fine query", "positive_ids": [doc]}).encode()
                  + b"\n" + b'{"query": "' + LATIN1 + b'", "positive_ids": ["' + doc.encode() + b'"]}\n')
    with pytest.raises(InputError) as err:
        load_pairs(path, read_chunks(chunks_dir))
    _one_line_naming(err.value, path, 2, 15)


def test_beir_queries_and_qrels_that_are_not_utf8_name_their_line(tmp_path):
    from embedforge.stages.sdg.byo import pairs_from_beir_qrels

    root = tmp_path / "beir"
    queries = _write(root / "queries.jsonl", b'{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": "' + LATIN1 + b'"}\n')
    _write(root / "qrels" / "train.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(InputError) as err:
        pairs_from_beir_qrels(root, "train")
    _one_line_naming(err.value, queries, 2, 27)
    queries.write_bytes(b'{"_id": "q1", "text": "ok"}\n')
    qrels = _write(root / "qrels" / "train.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t" + LATIN1 + b"\t1\n")
    with pytest.raises(InputError) as err:
        pairs_from_beir_qrels(root, "train")
    _one_line_naming(err.value, qrels, 3, 7)
    qrels.write_bytes(b"q1\td1\tinf\n")
    with pytest.raises(InputError, match=r"train.tsv:1: score 'inf' is not a number"):
        pairs_from_beir_qrels(root, "train")


def test_json_readers_name_the_byte_and_allow_a_bom(tmp_path):
    path = _write(tmp_path / "x.jsonl", b'\xef\xbb\xbf{"a": 1}\n{"b": "' + LATIN1 + b'"}\n')
    with pytest.raises(InputError) as err:
        list(iter_jsonl(path))
    _one_line_naming(err.value, path, 2, 11)
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1})]
    doc = _write(tmp_path / "x.json", b'{\n  "name": "' + LATIN1 + b'"\n}\n')
    with pytest.raises(InputError) as err:
        read_json(doc)
    _one_line_naming(err.value, doc, 2, 15)


# ------------------------------------------------------------------------------------------ symbolic links
def test_symlinks_to_files_outside_the_corpus_are_skipped_and_counted(tmp_path, base_model):
    outside = _write(tmp_path / "private" / "secrets.txt", b"The launch code is swordfish. Nobody may know it.\n")
    corpus = tmp_path / "docs"
    _write(corpus / "a.txt", b"Widgets are small parts of larger machines. They come in many sizes.\n")
    _write(corpus / "sub" / "b.txt", b"Gadgets differ from widgets in a few ways. They are more complex.\n")
    (corpus / "leak.txt").symlink_to(outside)
    (corpus / "alias.txt").symlink_to(corpus / "sub" / "b.txt")  # inside the folder: read as usual
    (corpus / "elsewhere").symlink_to(outside.parent, target_is_directory=True)  # linked folders: never entered

    manifest = ingest.run(corpus, tmp_path / "out", IngestConfig(), base_model=base_model)
    chunks = read_chunks(tmp_path / "out")
    assert manifest.counts["external_symlinks_skipped"] == 1
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["external_symlinks_skipped"] == 1
    assert "swordfish" not in " ".join(c.text for c in chunks)
    assert {c.doc_id for c in chunks} == {"a.txt", "alias.txt"}  # sub/b.txt: the same text, a duplicate

    followed = ingest.run(corpus, tmp_path / "out2", IngestConfig(follow_external_symlinks=True), base_model=base_model)
    assert followed.counts["external_symlinks_skipped"] == 0
    assert any("swordfish" in c.text for c in read_chunks(tmp_path / "out2"))


def test_a_corpus_of_only_outside_links_says_so(tmp_path, base_model):
    outside = _write(tmp_path / "private" / "secrets.txt", b"Nothing to see here, really nothing at all.\n")
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "leak.txt").symlink_to(outside)
    with pytest.raises(InputError, match=r"holds no supported files .*1 symbolic link\(s\) to files outside it were "
                                         r"skipped \(set ingest.follow_external_symlinks=true to read them\)"):
        ingest.run(corpus, tmp_path / "out", IngestConfig(), base_model=base_model)


# -------------------------------------------------------------------------------------------- blank queries
#: Blank queries whose query keys differ (sdg would merge lines whose queries are the same text).
BLANKS = {"nbsp": "\u00a0\u00a0\u00a0", "em_space": "\u2003\u200b\u2003", "zero_width": "\u200b\u200b\u200b\u200b",
          "bom": "\ufeff\ufeff\ufeff", "mixed": "\u00a0\u200b\u2003\ufeff\u2060"}


def test_queries_of_unicode_blanks_fail_validation_like_empty_ones(tmp_path, chunks_dir):
    """A pairs file whose queries are only NBSP, EM SPACE, zero-width spaces or BOMs: the validate stage refuses
    them (query_not_blank, with their count), as it refuses empty queries — they never reach training."""
    from embedforge.stages import sdg

    chunks = read_chunks(chunks_dir)
    train_docs = sorted({c.doc_id for c in chunks if c.split == "train"})
    rows = [{"query": f"what does document {d} explain", "positive_ids": [d]} for d in train_docs]
    rows += [{"query": q, "query_id": name, "positive_ids": [train_docs[0]]} for name, q in BLANKS.items()]
    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(pairs_file, rows)
    sdg.run(chunks_dir, tmp_path / "pairs", SdgConfig(), pairs_file=str(pairs_file))
    with pytest.raises(ValidationFailed) as err:
        validate.run(chunks_dir, tmp_path / "pairs", tmp_path / "validation", ValidateConfig(min_eval_pairs=0))
    msg = str(err.value)
    assert msg.startswith("pairs failed 1 of ") and f"query_not_blank ({len(BLANKS)} row(s), e.g. nbsp: " in msg
    summary = read_json(tmp_path / "validation" / "validation.json")
    check = next(r for r in summary["results"] if r["check"] == "query_not_blank")
    assert check["unexpected_count"] == len(BLANKS)
    zero = next(e for e in check["examples"] if e["query_id"] == "zero_width")
    assert zero["detail"] == "only invisible characters: U+200B"


def test_is_blank_knows_the_invisible_characters():
    from embedforge.retrieval.text import is_blank

    assert all(is_blank(q) for q in [*BLANKS.values(), "", " \t\n", "\u3164", "\u2800\u115f"])
    assert not any(is_blank(q) for q in ["a", "\u200bquery", "\u00a0x", "ü", "日本"])


# ----------------------------------------------------------------------------- what the generator may make
def test_a_page_long_title_is_no_query_and_every_generated_query_passes_validation(tmp_path, base_model):
    """A markdown file whose first heading is 100 KB long (a converted page without line breaks): the offline
    generator skips that title (titles_too_long) and every query it makes passes the validate stage's rules, so
    the run goes on instead of failing its own validation."""
    from embedforge.stages import sdg

    corpus = tmp_path / "docs"
    long_title = " ".join(f"word{i}" for i in range(15_000))  # about 100 KB, all on one heading line
    _write(corpus / "page.md", f"# {long_title}\n\nThe page explains how gadgets are made. It has a body too.\n".encode())
    long_sentence = " ".join(["https://example.com/" + "x" * 60] * 40) + "."  # 40 "words" of 80 characters
    for i in range(6):
        _write(corpus / f"doc{i}.md", (f"# Widget guide number {i}\n\nWidgets of kind {i} are assembled by hand in "
                                       f"small workshops. {long_sentence} Each widget is tested before it ships. "
                                       "Testing takes about an hour per widget.\n").encode())
    ingest.run(corpus, tmp_path / "chunks", IngestConfig(eval_fraction=0.3), base_model=base_model)
    manifest = sdg.run(tmp_path / "chunks", tmp_path / "pairs", SdgConfig(), base_model=base_model)
    assert manifest.counts["gen_titles_too_long"] == 1
    pairs = read_pairs(tmp_path / "pairs")
    assert pairs and all(len(p.query) <= 1000 for p in pairs)
    validate.run(tmp_path / "chunks", tmp_path / "pairs", tmp_path / "validation",
                 ValidateConfig(min_train_pairs=1, min_eval_pairs=0))  # raises ValidationFailed on any bad query


def test_every_offline_query_of_the_sample_corpus_fits_the_validators_defaults(chunks_dir):
    from embedforge.stages.sdg.offline import OfflineGenerator

    defaults = ValidateConfig()
    chunks = read_chunks(chunks_dir)
    gen = OfflineGenerator(SdgConfig(queries_per_chunk=10, min_query_words=1))
    queries = [p.query for split in ("train", "eval") for p in gen.generate([c for c in chunks if c.split == split], split)]
    assert queries
    from embedforge.retrieval.text import is_blank

    bad = [q for q in queries if is_blank(q) or not defaults.min_query_chars <= len(q) <= defaults.max_query_chars]
    assert not bad, bad[:3]



def test_eval_beir_qrels_that_are_not_utf8_or_not_finite_name_their_line(tmp_path):
    """The --eval-beir reader (evaluate, gate) too: the qrels' line and byte, and no OverflowError on ``inf``."""
    from embedforge.retrieval.beir import load_beir_folder

    root = tmp_path / "beir"
    _write(root / "corpus.jsonl", b'{"_id": "d1", "title": "", "text": "a document"}\n')
    _write(root / "queries.jsonl", b'{"_id": "q1", "text": "a query"}\n')
    qrels = _write(root / "qrels" / "test.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t" + LATIN1 + b"\t1\n")
    with pytest.raises(InputError) as err:
        load_beir_folder(root)
    _one_line_naming(err.value, qrels, 3, 7)
    qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\tinf\n")
    with pytest.raises(InputError, match=r"test.tsv:2: score 'inf' is not a finite number"):
        load_beir_folder(root)
    qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t2\n")
    assert load_beir_folder(root).qrels == {"q1": {"d1": 2}}

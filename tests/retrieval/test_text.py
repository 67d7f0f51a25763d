"""The text utilities: sentence and segment splitting, code detection, whitespace and query keys (table-driven)."""

from __future__ import annotations

import pytest

from embedforge.retrieval.text import (
    join_segments,
    looks_like_code,
    normalize_ws,
    query_key,
    split_segments,
    split_sentences,
)


# ---------------------------------------------------------------------------------------------------- sentences
@pytest.mark.parametrize(
    "paragraph, sentences",
    [
        pytest.param(
            "Dr. Smith moved to the U.S. in 2019. See Fig. 3 for e.g. the curve. It costs 3.50 dollars! Why? Done.",
            ["Dr. Smith moved to the U.S. in 2019.", "See Fig. 3 for e.g. the curve.", "It costs 3.50 dollars!", "Why?",
             "Done."],
            id="abbreviations-acronyms-decimals",
        ),
        pytest.param("J. Smith wrote the report. He was thanked.", ["J. Smith wrote the report.", "He was thanked."],
                     id="initial"),
        pytest.param('He said "stop." Then he left.', ['He said "stop."', "Then he left."], id="closing-quote"),
        pytest.param("(See the appendix.) The rest follows.", ["(See the appendix.)", "The rest follows."],
                     id="closing-bracket"),
        pytest.param("Read section 2. and then stop.", ["Read section 2. and then stop."], id="lower-case-continues"),
        pytest.param("flutter of a wing at high speed . the model was tested in a tunnel .",
                     ["flutter of a wing at high speed .", "the model was tested in a tunnel ."],
                     id="tokenised-corpus"),
        pytest.param("The first line\ncontinues here.  Second\tone.", ["The first line continues here.", "Second one."],
                     id="newlines-and-tabs-are-spaces"),
        pytest.param("Wait... Then go.", ["Wait...", "Then go."], id="ellipsis"),
        pytest.param("no final punctuation here", ["no final punctuation here"], id="no-punctuation"),
        pytest.param("   \n ", [], id="blank"),
    ],
)
def test_split_sentences(paragraph, sentences):
    assert split_sentences(paragraph) == sentences


# ----------------------------------------------------------------------------------------------------- segments
@pytest.mark.parametrize(
    "text, segments",
    [
        pytest.param(
            "Set the value like this:\n\n    x = compute(a, b)\n    print(x)\n\nThen it works. Really.",
            [("prose", "Set the value like this:"), ("code", "    x = compute(a, b)\n    print(x)"),
             ("prose", "Then it works."), ("prose", "Really.")],
            id="indented-code-block",
        ),
        pytest.param(
            "  It was a dark and stormy night; the rain fell\nin torrents. Then it stopped.",
            [("prose", "It was a dark and stormy night; the rain fell in torrents."), ("prose", "Then it stopped.")],
            id="indented-first-line-is-prose",
        ),
        pytest.param(
            "Intro text here.\n\n```python\nx = 1\n\ny = 2\n```\n\nAfter the code.",
            [("prose", "Intro text here."), ("code", "```python\nx = 1\n\ny = 2\n```"), ("prose", "After the code.")],
            id="fenced-block-keeps-blank-lines",
        ),
        pytest.param(
            "Installation\n\nRun the installer. It asks for a key.",
            [("heading", "Installation"), ("prose", "Run the installer."), ("prose", "It asks for a key.")],
            id="heading",
        ),
        pytest.param(
            "A short line.\n\nAnother one, with a comma\n\nThe end of",
            [("prose", "A short line."), ("prose", "Another one, with a comma"), ("prose", "The end of")],
            id="not-headings-punctuation-comma-continuation",
        ),
        pytest.param(
            "Steps:\n- download the file\n- unpack it",
            [("prose", "Steps:"), ("prose", "- download the file"), ("prose", "- unpack it")],
            id="list-items",
        ),
        pytest.param(
            'The grammar is\nfor_stmt ::= "for" target_list ":" suite\nand nothing else follows.',
            [("prose", "The grammar is"), ("code", 'for_stmt ::= "for" target_list ":" suite'),
             ("prose", "and nothing else follows.")],
            id="code-line-inside-prose",
        ),
        pytest.param(
            "Title\r\n\r\n\tvalue = 1\r\n",
            [("heading", "Title"), ("code", "    value = 1")],
            id="crlf-and-tab",
        ),
        pytest.param("", [], id="empty"),
    ],
)
def test_split_segments(text, segments):
    assert [(s.kind, s.text) for s in split_segments(text)] == segments


def test_segments_number_paragraphs_and_join_back():
    segs = split_segments("A first one. Still the first.\n\nA second one.\n\n    code = 1\n\nHeading here\n\nLast.")
    assert [(s.kind, s.para) for s in segs] == [("prose", 0), ("prose", 0), ("prose", 1), ("code", 2),
                                                 ("heading", 3), ("prose", 4)]
    # sentences of one paragraph joined by a space; paragraphs, code and headings by a blank line
    assert join_segments(segs) == ("A first one. Still the first.\n\nA second one.\n\n    code = 1\n\nHeading here"
                                   "\n\nLast.")


@pytest.mark.parametrize(
    "text",
    [
        "Set the value like this:\n\n    x = compute(a, b)\n    print(x)\n\nThen it works. Really.",
        "Intro.\n\n```\nfence\n```\n\nSteps:\n- one\n- two\n\nHeading\n\nBody text. More body.",
        'The grammar is\nfor_stmt ::= "for" target_list\nand it ends. Here.',
    ],
)
def test_chunk_text_resplits_into_the_same_segments(text):
    """The offline generator re-splits chunk texts written by ingest: the round trip must be exact."""
    segs = split_segments(text)
    assert [(s.kind, s.text) for s in split_segments(join_segments(segs))] == [(s.kind, s.text) for s in segs]


# --------------------------------------------------------------------------------------------------------- code
@pytest.mark.parametrize(
    "line, is_code",
    [
        ("x = compute(a, b)", True),
        ('for_stmt ::= "for" target_list', True),
        (">>> print(1)", True),
        ("$ pip install widget", True),
        ("def handler(event):", True),
        ("import os", True),
        ("from a.b import c", True),
        ("total += 1", True),
        ("run()", True),
        ("a{b}[c]<d>", True),
        ("The value is equal to five.", False),
        ("Use the for statement to loop over a list.", False),
        ("Import the data first, then clean it.", False),
        ("", False),
    ],
)
def test_looks_like_code(line, is_code):
    assert looks_like_code(line) is is_code


# ------------------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    "text, normalised, key",
    [
        ("  a\n\tb   c ", "a b c", "a b c"),
        ("What IS  the\nStraße?", "What IS the Straße?", "what is the strasse?"),
        ("", "", ""),
    ],
)
def test_normalize_ws_and_query_key(text, normalised, key):
    assert normalize_ws(text) == normalised
    assert query_key(text) == key

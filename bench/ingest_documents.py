"""Reading speed of PDF, DOCX and PPTX corpus files (the ``documents`` extra) and the cost of ``embedforge ingest``
on them.

Not a test. Writes, into a temporary folder, a ``--pages``-page PDF (reportlab: a heading and three paragraphs a
page, each page's paragraphs different), a DOCX with as many headed sections (python-docx) and a PPTX with as
many slides (python-pptx) — the test extra's writers — then times
:func:`embedforge.stages.ingest.documents.read_document` on each file in this process and runs ``embedforge
ingest`` on the folder in a child process (peak RSS, wall time, chunks).

Usage (see docs/benchmarks.md)::

    python bench/ingest_documents.py --pages 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_memory import WORDS, peak_rss  # noqa: E402


def paragraph(rng: random.Random) -> str:
    return " ".join(" ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + "." for _ in range(5))


def write_files(folder: Path, pages: int, seed: int = 1) -> None:
    import docx
    import pptx
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    rng = random.Random(seed)
    styles = getSampleStyleSheet()
    story = []
    for n in range(pages):
        story += [PageBreak()] if n else []
        story += [Paragraph(f"Chapter {n + 1}", styles["Heading1"])]
        story += [Paragraph(paragraph(rng), styles["BodyText"]) for _ in range(3)]
    SimpleDocTemplate(str(folder / "book.pdf"), title="Book").build(story)

    d = docx.Document()
    for n in range(pages):
        d.add_heading(f"Section {n + 1}", level=1)
        for _ in range(3):
            d.add_paragraph(paragraph(rng))
    d.save(str(folder / "handbook.docx"))

    deck = pptx.Presentation()
    for n in range(pages):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Slide {n + 1}"
        frame = slide.placeholders[1].text_frame
        frame.text = paragraph(rng)
        frame.add_paragraph().text = paragraph(rng)
    deck.save(str(folder / "deck.pptx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=200, help="PDF pages, DOCX sections and PPTX slides")
    args = ap.parse_args()
    from embedforge.stages.ingest.documents import read_document

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        write_files(corpus, args.pages)
        result: dict[str, object] = {"pages": args.pages}
        read_document(corpus / "deck.pptx")  # first use imports markitdown; timed apart below
        for name in ("book.pdf", "handbook.docx", "deck.pptx"):
            start = time.perf_counter()
            converted = read_document(corpus / name)
            seconds = time.perf_counter() - start
            chars = sum(len(p) for p in converted.pages)
            result[name] = {"bytes": (corpus / name).stat().st_size, "pages": len(converted.pages), "chars": chars,
                            "seconds": round(seconds, 2), "ms_per_page": round(1000 * seconds / args.pages, 1)}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        rss, wall, rc = peak_rss([sys.executable, "-m", "embedforge.cli", "ingest", "--corpus", str(corpus),
                                  "--out", str(Path(tmp) / "out")], env)
        manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text()) if rc == 0 else {}
        result["ingest"] = {"rc": rc, "wall_s": round(wall, 1), "peak_rss_mb": round(rss / 2**20),
                            "documents": manifest.get("counts", {}).get("documents"),
                            "chunks": manifest.get("counts", {}).get("chunks")}
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

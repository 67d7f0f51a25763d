"""The demo corpus: the 79 topics of the Python Language Reference that ship with CPython (``pydoc_data``),
one reStructuredText-like file each. Licence: PSF License (Python documentation). See README.md."""

from pathlib import Path

SAMPLE_CORPUS = Path(__file__).parent / "docs"

"""Hard links that keep ``--out`` small: an attempt's ``model/``, ``onnx/``, ``triton/``, the stages a resumed
attempt reuses, and the files MLflow's local artifact store holds that a stage already wrote, share their bytes
with the artifact they come from instead of copying them (stage outputs are never modified after they are
written). Where links cannot be made (another filesystem), files are copied / left as they are."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

#: Files below this size are not worth comparing for :func:`link_identical`.
MIN_LINK_BYTES = 1 << 20


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` made of hard links."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def link_identical(root: Path, sources: list[Path]) -> int:
    """Replace each large file under ``root`` that has a same-named, byte-identical file under ``sources`` by a hard
    link to that file; return the bytes saved."""
    candidates: dict[tuple[str, int], list[Path]] = {}
    for src in sources:
        for f in src.rglob("*"):
            if f.is_file() and f.stat().st_size >= MIN_LINK_BYTES:
                candidates.setdefault((f.name, f.stat().st_size), []).append(f)
    saved = 0
    for f in [p for p in root.rglob("*") if p.is_file()]:
        size = f.stat().st_size
        for cand in candidates.get((f.name, size), []):
            if os.path.samefile(f, cand) or not filecmp.cmp(f, cand, shallow=False):
                continue
            tmp = f.with_name(f".{f.name}.link")
            try:
                os.link(cand, tmp)
                os.replace(tmp, f)
                saved += size
            except OSError:
                tmp.unlink(missing_ok=True)
            break
    return saved

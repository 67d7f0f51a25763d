"""File names inside artifact folders and the atomic read/write helpers every stage uses."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from embedforge.errors import InputError

MANIFEST = "manifest.json"
CHUNKS_FILE = "chunks.jsonl"
PAIRS_FILE = "pairs.jsonl"
VALIDATION_FILE = "validation.json"
TRAIN_FILE = "train.jsonl"
EMBEDDINGS_FILE = "embeddings.npy"
EMBEDDING_IDS_FILE = "embedding_ids.json"
EVALUATION_FILE = "evaluation.json"
#: One :class:`~embedforge.contracts.results.QueryEvaluation` per eval query, beside ``evaluation.json``.
PER_QUERY_FILE = "per_query.jsonl"
#: The same records for the queries of the external ``--eval-beir`` collection.
EXTERNAL_PER_QUERY_FILE = "external_per_query.jsonl"
BEIR_DIR = "beir"
ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"
REGISTRY_FILE = "registry.json"
DECISION_FILE = "decision.json"
PROMOTION_FILE = "promotion.json"

R = TypeVar("R", bound=BaseModel)


# ----------------------------------------------------------------------------------------------- file helpers
def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; artifacts are read by other users (Triton, KFP UI)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def not_utf8(path: str | Path, line: int, data: bytes, at: int) -> InputError:
    """The error for a file that is not UTF-8: ``FILE:LINE: not UTF-8 text (byte 0xE9 at column 35)`` and what to
    do. ``data`` is the line's (or the whole file's) bytes, ``at`` the offset of the bad byte in it; ``line`` the
    number of the line ``data`` starts on."""
    line += data.count(b"\n", 0, at)
    column = at - (data.rfind(b"\n", 0, at) + 1) + 1
    return InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[at]:02x} at column {column}): re-encode the "
                      f"file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {Path(path).name} > fixed.{Path(path).name})")


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file (a BOM on the first line is dropped); a line that is not
    UTF-8 raises InputError naming the file, the line and the byte (:func:`not_utf8`), never UnicodeDecodeError."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bom = 3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
                raise not_utf8(path, n, raw, exc.start + bom) from None
            yield n, line


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise not_utf8(path, 1, data, exc.start) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    lines = []
    for r in records:
        obj = r.model_dump(mode="json") if isinstance(r, BaseModel) else r
        lines.append(json.dumps(obj, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; a malformed line — not UTF-8, not JSON, not an object — raises InputError
    naming file and line."""
    path = Path(path)
    for n, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def read_records(path: str | Path, model: type[R]) -> list[R]:
    out = []
    for n, obj in iter_jsonl(path):
        try:
            out.append(model.model_validate(obj))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(record)'}: {e['msg']}" for e in exc.errors())
            raise InputError(f"{path}:{n}: {problems}") from None
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(arguments: dict[str, Any], inputs: list[Path | None]) -> str:
    """sha256 of the pipeline arguments and of every input file's relative path and content."""
    h = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode("utf-8"))
    for path in inputs:
        h.update(b"\0input\0" + str(path).encode("utf-8"))
        if path is not None:
            _add_content(h, path)
    return h.hexdigest()


def content_sha256(path: Path) -> str:
    """sha256 of a file's content, or of a folder's files (relative paths and contents), wherever it lies."""
    h = hashlib.sha256()
    _add_content(h, path)
    return h.hexdigest()


def _add_content(h, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(b"\0" + f.relative_to(path).as_posix().encode("utf-8") + b"\0" if path.is_dir() else b"\0")
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())

"""Records that cross stage boundaries, the file names inside each artifact folder, and their read/write.

Every artifact folder carries a ``manifest.json`` (schema version, stage, counts, timings, upstream inputs and
their sha256) written atomically, so a half-written artifact is never mistaken for a finished one.

Artifact folders (file names live only here):

=============  ====================================================================================
chunks         ``chunks.jsonl`` (:class:`Chunk`)
pairs          ``pairs.jsonl`` (:class:`Pair`)
validation     ``validation.json`` (Great Expectations result, summarised)
mined          ``train.jsonl`` (``anchor, positive, negative_1..n``; sentence-transformers column order),
               ``embeddings.npy`` + ``embedding_ids.json`` (base-model chunk embeddings, reused by evaluate)
model          a sentence-transformers folder
evaluation     ``evaluation.json`` + ``beir/`` (the eval split in BEIR layout)
onnx           ``model.onnx``, tokenizer files, ``parity.json``
registry       ``registry.json``
decision       ``decision.json``
triton         ``<model_name>/config.pbtxt``, ``<model_name>/<version>/model.onnx``,
               ``<model_name>/<version>/tokenizer/``, ``promotion.json``
=============  ====================================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedforge.errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHUNKS_FILE = "chunks.jsonl"
PAIRS_FILE = "pairs.jsonl"
VALIDATION_FILE = "validation.json"
TRAIN_FILE = "train.jsonl"
EMBEDDINGS_FILE = "embeddings.npy"
EMBEDDING_IDS_FILE = "embedding_ids.json"
EVALUATION_FILE = "evaluation.json"
BEIR_DIR = "beir"
ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"
REGISTRY_FILE = "registry.json"
DECISION_FILE = "decision.json"
PROMOTION_FILE = "promotion.json"

Split = Literal["train", "eval"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Chunk(Record):
    chunk_id: str = Field(description="Deterministic: '<doc_id>#<position>'.")
    doc_id: str
    text: str
    title: str = ""
    position: int = Field(ge=0)
    split: Split


class Pair(Record):
    """One query with its positives. ``relevance`` says whether positives are judged per chunk or per document
    (a document scores as its best chunk)."""

    query_id: str
    query: str
    positive_chunk_ids: list[str] = Field(default_factory=list)
    positive_doc_ids: list[str] = Field(default_factory=list)
    relevance: Literal["chunk", "document"] = "chunk"
    split: Split
    positive_text: str | None = Field(None, description="Training-time text of the positive, if it differs from the chunk (e.g. inverse cloze).")
    negatives: list[str] = Field(default_factory=list, description="User-supplied negative texts.")
    exclude_chunk_ids: list[str] = Field(
        default_factory=list,
        description="Chunks never ranked for this query in evaluation (e.g. the chunk an inverse-cloze query was cut from).",
    )
    source: str = Field("", description="Generator or file that produced the pair.")
    meta: dict[str, Any] = Field(default_factory=dict)


class TrainExample(Record):
    anchor: str
    positive: str
    negatives: list[str] = Field(default_factory=list)

    def to_columns(self) -> dict[str, str]:
        row = {"anchor": self.anchor, "positive": self.positive}
        row.update({f"negative_{i + 1}": n for i, n in enumerate(self.negatives)})
        return row

    @classmethod
    def from_columns(cls, row: dict[str, str]) -> "TrainExample":
        negs = [row[k] for k in sorted((k for k in row if k.startswith("negative_")), key=lambda k: int(k.split("_")[1]))]
        return cls(anchor=row["anchor"], positive=row["positive"], negatives=negs)


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


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
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
    """Yield ``(line_number, object)``; a malformed line raises InputError naming file and line."""
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (OSError, UnicodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    with fh:
        for n, line in enumerate(fh, start=1):
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


# -------------------------------------------------------------------------------------------------- manifests
class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    stage: str
    counts: dict[str, int] = Field(default_factory=dict)
    started_at: float
    finished_at: float
    seconds: float
    inputs: dict[str, str] = Field(default_factory=dict, description="name -> URI/path of upstream artifacts")
    input_sha256: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


class StageTimer:
    """``with StageTimer("ingest") as t: ...; t.write_manifest(out_dir, counts=...)``."""

    def __init__(self, stage: str):
        self.stage = stage
        self.started_at = time.time()

    def __enter__(self) -> "StageTimer":
        self.started_at = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write_manifest(
        self,
        out_dir: str | Path,
        counts: dict[str, int] | None = None,
        inputs: dict[str, str | Path] | None = None,
        config: BaseModel | dict[str, Any] | None = None,
        **extra: Any,
    ) -> Manifest:
        now = time.time()
        input_sha = {}
        for name, p in (inputs or {}).items():
            mp = Path(p) / MANIFEST if Path(p).is_dir() else Path(p)
            if mp.is_file():
                input_sha[name] = sha256_file(mp)
        cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {})
        m = Manifest(
            stage=self.stage,
            counts=counts or {},
            started_at=self.started_at,
            finished_at=now,
            seconds=round(now - self.started_at, 3),
            inputs={k: str(v) for k, v in (inputs or {}).items()},
            input_sha256=input_sha,
            config=cfg,
            **extra,
        )
        write_json(Path(out_dir) / MANIFEST, m.model_dump(mode="json"))
        return m


def read_manifest(artifact_dir: str | Path) -> Manifest:
    return Manifest.model_validate(read_json(Path(artifact_dir) / MANIFEST))


def read_chunks(artifact_dir: str | Path) -> list[Chunk]:
    return read_records(Path(artifact_dir) / CHUNKS_FILE, Chunk)


def read_pairs(artifact_dir: str | Path) -> list[Pair]:
    return read_records(Path(artifact_dir) / PAIRS_FILE, Pair)


def read_train_examples(artifact_dir: str | Path) -> list[TrainExample]:
    return [TrainExample.from_columns(obj) for _, obj in iter_jsonl(Path(artifact_dir) / TRAIN_FILE)]

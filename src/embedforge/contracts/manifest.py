"""``manifest.json``: the versioned, typed record every stage writes last into its artifact folder.

A manifest carries the schema version, the stage, counts, timings, the upstream inputs with the sha256 of their
manifests, the effective config (credentials redacted) and the stage's typed result (:mod:`embedforge.contracts.results`). It is written
atomically after everything else, so a folder with a valid manifest is a finished artifact. Readers check the
schema version first: an artifact written by an older embedforge fails with one line saying which stage to
re-run, never with a ``KeyError`` deep inside a later stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedforge.contracts.files import (
    DECISION_FILE,
    EVALUATION_FILE,
    MANIFEST,
    PROMOTION_FILE,
    REGISTRY_FILE,
    VALIDATION_FILE,
    read_json,
    sha256_file,
    write_json,
)
from embedforge.contracts.results import RESULT_TYPES, StageResult
from embedforge.errors import InputError
from embedforge.redact import redact_tree

#: 2: the stage's result is a typed ``result`` field (1 carried it as untyped top-level extras).
SCHEMA_VERSION = 2

T = TypeVar("T", bound=StageResult)


class Manifest(BaseModel, Generic[T]):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    stage: str
    counts: dict[str, int] = Field(default_factory=dict)
    started_at: float
    finished_at: float
    seconds: float
    inputs: dict[str, str] = Field(default_factory=dict, description="name -> URI/path of upstream artifacts")
    input_sha256: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    result: T


class StageTimer:
    """Started when a stage starts; ``write_manifest`` records the elapsed time with the stage's result."""

    def __init__(self, stage: str):
        self.stage = stage
        self.started_at = time.time()

    def write_manifest(
        self,
        out_dir: str | Path,
        result: StageResult | None = None,
        counts: dict[str, int] | None = None,
        inputs: dict[str, str | Path] | None = None,
        config: BaseModel | dict[str, Any] | None = None,
        **fields: Any,
    ) -> Manifest:
        """Write ``manifest.json`` last. ``result`` is the stage's typed result; a stage may instead pass its
        fields as keywords, validated into that type here (so a misspelt or missing field fails the stage)."""
        expected = RESULT_TYPES[self.stage]
        if result is None:
            result = expected.model_validate(fields)
        elif fields:
            raise TypeError(f"pass the {self.stage} result either as result= or as fields, not both")
        if not isinstance(result, expected):
            raise TypeError(f"the {self.stage} stage's result must be a {expected.__name__}, not {type(result).__name__}")
        now = time.time()
        input_sha = {}
        for name, p in (inputs or {}).items():
            mp = Path(p) / MANIFEST if Path(p).is_dir() else Path(p)
            if mp.is_file():
                input_sha[name] = sha256_file(mp)
        # credentials a setting may carry (a URL's password, an api_key= parameter) are never written
        cfg = redact_tree(config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {}))
        m = Manifest[expected](
            stage=self.stage,
            counts=counts or {},
            started_at=self.started_at,
            finished_at=now,
            seconds=round(now - self.started_at, 3),
            inputs={k: str(v) for k, v in (inputs or {}).items()},
            input_sha256=input_sha,
            config=cfg,
            result=result,
        )
        write_json(Path(out_dir) / MANIFEST, m.model_dump(mode="json"))
        return m


def read_manifest(artifact_dir: str | Path, result_type: type[T] | None = None) -> Manifest[T]:
    """The manifest of ``artifact_dir`` with its result as ``result_type`` (default: the type its stage writes).

    Raises InputError naming the file and the stage to re-run when the manifest is missing, from another schema
    version, from another stage than ``result_type``'s, or does not match the model.
    """
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{artifact_dir} has no {MANIFEST}: it is not a finished embedforge artifact; re-run the "
                         "stage that writes it")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a JSON object")
    stage = raw.get("stage", "?")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{path} was written by another embedforge version (manifest schema {version}, this one "
                         f"reads {SCHEMA_VERSION}): re-run the {stage} stage")
    if result_type is None:
        result_type = RESULT_TYPES.get(stage)
        if result_type is None:
            raise InputError(f"{path} names an unknown stage {stage!r}")
    elif stage != result_type.stage:
        raise InputError(f"{path} is the output of the {stage} stage, not of the {result_type.stage} stage: "
                         "check which artifact is wired to this input")
    try:
        return Manifest[result_type].model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InputError(f"{path} does not match this embedforge's {stage} manifest ({problems}): re-run the "
                         f"{stage} stage") from None


def read_result(artifact_dir: str | Path, result_type: type[T]) -> T:
    """The typed result of the stage that wrote ``artifact_dir`` — the one way a later stage reads it."""
    return read_manifest(artifact_dir, result_type).result


def has_manifest(artifact_dir: str | Path) -> bool:
    """Whether ``artifact_dir`` holds a finished artifact (its manifest is written last)."""
    return (Path(artifact_dir) / MANIFEST).is_file()


#: The human-facing report each of these stages writes beside its manifest (for people, MLflow and the KFP UI).
REPORT_FILES = {"validate": VALIDATION_FILE, "evaluate": EVALUATION_FILE, "register": REGISTRY_FILE,
                "gate": DECISION_FILE, "promote": PROMOTION_FILE}


def report_file(artifact_dir: str | Path, result_type: type[StageResult]) -> Path:
    """The report file of a finished artifact of ``result_type``'s stage (to log or show it, not to parse it)."""
    read_manifest(artifact_dir, result_type)
    return Path(artifact_dir) / REPORT_FILES[result_type.stage]

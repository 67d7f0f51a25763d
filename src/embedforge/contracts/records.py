"""The records that cross stage boundaries as JSON lines: chunks, pairs and training rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from embedforge.contracts.files import (
    CHUNKS_FILE,
    PAIRS_FILE,
    TRAIN_FILE,
    iter_jsonl,
    read_records,
)

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
    page: int | None = Field(None, ge=1, description="The page of a PDF (slide of a PPTX) the chunk comes from "
                             "(a chunk never spans two); absent for documents without pages.")


class Pair(Record):
    """One query with its positives. ``relevance`` says whether positives are judged per chunk or per document
    (a document scores as its best chunk)."""

    query_id: str
    query: str
    positive_chunk_ids: list[str] = Field(default_factory=list)
    positive_doc_ids: list[str] = Field(default_factory=list)
    relevance: Literal["chunk", "document"] = "chunk"
    positive_grades: dict[str, int] = Field(
        default_factory=dict,
        description="Graded judgements: positive chunk id (document id for relevance 'document') -> grade; a "
                    "positive not listed has grade 1. Training uses every grade as a positive (mine.train_grades=all; "
                    "top: the top grade only); evaluation uses all grades.",
    )
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
    grade: int = Field(1, ge=1, description="Relevance grade of the positive (graded judgements; 1 = ungraded). "
                       "Written as a last column only when above 1: drop it before giving the file to "
                       "sentence-transformers, which would read it as a text column.")
    augment: bool = Field(False, description="Row of an augmentation pair (sdg.augment: an offline pair of the "
                          "user's documents beside the user's own pairs); train.schedule=auto trains on these rows "
                          "only where they help the user's held-out queries. Written as a last column only when "
                          "true: drop it (and those rows, if you like) before giving the file to "
                          "sentence-transformers.")

    def to_columns(self) -> dict[str, str | int | bool]:
        row: dict[str, str | int | bool] = {"anchor": self.anchor, "positive": self.positive}
        row.update({f"negative_{i + 1}": n for i, n in enumerate(self.negatives)})
        if self.grade != 1:
            row["grade"] = self.grade
        if self.augment:
            row["augment"] = True
        return row

    @classmethod
    def from_columns(cls, row: dict[str, str | int | bool]) -> "TrainExample":
        negs = [row[k] for k in sorted((k for k in row if k.startswith("negative_")), key=lambda k: int(k.split("_")[1]))]
        return cls(anchor=row["anchor"], positive=row["positive"], negatives=negs, grade=row.get("grade", 1),
                   augment=row.get("augment", False))



def read_chunks(artifact_dir: str | Path) -> list[Chunk]:
    return read_records(Path(artifact_dir) / CHUNKS_FILE, Chunk)


def read_pairs(artifact_dir: str | Path) -> list[Pair]:
    return read_records(Path(artifact_dir) / PAIRS_FILE, Pair)


def read_train_examples(artifact_dir: str | Path) -> list[TrainExample]:
    return [TrainExample.from_columns(obj) for _, obj in iter_jsonl(Path(artifact_dir) / TRAIN_FILE)]

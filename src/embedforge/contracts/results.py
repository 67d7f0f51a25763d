"""One typed result per stage: what a stage hands to the next ones, carried in its manifest's ``result`` field.

Later stages, the runner and the components read these only through
:func:`embedforge.contracts.read_result` (never a file by name), so a field that changes is a type error
here, not a ``KeyError`` three stages later. Each model names the stage that writes it (``stage``) and forbids
unknown fields. The human-facing files some stages also write (``evaluation.json``, ``registry.json``,
``decision.json``, ``promotion.json``) hold the same models, for people, MLflow and the KFP UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from embedforge.contracts.files import (
    EXTERNAL_PER_QUERY_FILE,
    PER_QUERY_FILE,
    VALIDATION_FILE,
    read_json,
    read_records,
)
from embedforge.errors import InputError


class StageResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: ClassVar[str]


class IngestResult(StageResult):
    stage: ClassVar[str] = "ingest"
    corpus_format: str = Field(description="folder or beir")
    base_model: str = Field(description="The model whose tokenizer capped chunk lengths.")
    unreadable_files: dict[str, str] = Field(
        default_factory=dict, description="PDF/DOCX/PPTX files skipped (path relative to the corpus folder -> why: "
        "damaged, truncated, password-protected, no text, or the documents extra not installed).")


class SdgResult(StageResult):
    stage: ClassVar[str] = "sdg"
    mode: str = Field(description="Where the pairs came from: a generator's name or 'pairs_file'.")
    generator_stats: dict[str, float] = Field(default_factory=dict, description="Requests, tokens, drops, ...")
    base_model: str


class ValidationResult(StageResult):
    stage: ClassVar[str] = "validate"
    success: bool
    failed_checks: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- the generated-pair policy mine applied
# (decided per pair source in embedforge.contracts.policy; recorded here so train reads it instead of deciding again)
#: ``offline``: pairs of the offline generator (``Pair.source`` ``offline/*``); ``default``: every other source.
PairKind = Literal["offline", "default"]
PAIR_KINDS: tuple[PairKind, ...] = ("offline", "default")

class PairPolicy(BaseModel):
    """What mine and train do with the pairs of one kind of source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_negatives: int = Field(ge=0, description="Negatives per example mine fills up to with mined ones.")
    consistency_rank: int = Field(
        ge=0, description="Mine keeps a pair only if fewer than this many chunks of other documents outscore its "
        "positive (base model); 0 = keep every pair.")
    base_weight: float = Field(
        ge=0.0, lt=1.0, description="WiSE-FT weight train uses when these pairs make most rows and "
        "train.base_weight is unset.")


class AppliedPolicy(PairPolicy):
    """A :class:`PairPolicy` as mine applied it, with what it produced."""

    pairs: int = Field(0, ge=0, description="Train pairs of this kind that mine read.")
    dropped_by_consistency: int = Field(0, ge=0, description="Of those, pairs the consistency filter dropped.")
    examples: int = Field(0, ge=0, description="Rows of train.jsonl made from this kind's pairs.")


class MinedPolicy(BaseModel):
    """The policy of every pair kind and what it produced: the ``policy`` record of the mine result."""

    model_config = ConfigDict(extra="forbid")

    kinds: dict[PairKind, AppliedPolicy]

    def base_weight(self) -> float:
        """The WiSE-FT weight of the user's (``default``-kind) pairs when they made any rows — offline rows beside
        them are augmentation (``sdg.augment``), which must not pull the user's fine-tuning back toward the base
        model — else of the kind that made more than half of the rows; 0 when no kind did."""
        user = self.kinds.get("default")
        if user is not None and user.examples > 0:
            return user.base_weight
        total = sum(p.examples for p in self.kinds.values())
        return next((p.base_weight for p in self.kinds.values() if 2 * p.examples > total), 0.0)


class MineResult(StageResult):
    stage: ClassVar[str] = "mine"
    base_model: str
    embedding_dim: int
    mean_positive_score: float
    mean_negative_score: float
    policy: MinedPolicy


class LossPoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    step: int
    loss: float


class ScheduleTrial(BaseModel):
    """One probe of ``train.schedule=auto``: a learning rate and temperature trained on the kept train queries,
    scored on the held-out ones after each whole epoch (and at the probe's end)."""

    model_config = ConfigDict(extra="forbid")
    learning_rate: float
    temperature: float
    augment: bool = Field(False, description="Trained with the augmentation rows (sdg.augment) beside the user's.")
    steps: int
    scores: dict[str, float] = Field(description="Epochs trained (as text, e.g. '1', '1.6') -> held-out nDCG@10.")
    per_query: dict[str, list[float]] = Field(
        default_factory=dict, exclude=True, description="Epochs -> each held-out query's nDCG@10, in query order "
        "(for the choice's paired comparison; not written to the manifest).")


class ScheduleChoice(BaseModel):
    """What train chose (``train.schedule``) and why: the probes, the held-out slice and the budget they used."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["fixed", "auto"]
    learning_rate: float
    temperature: float
    epochs: float
    augment: bool = Field(False, description="Whether the run trains on the augmentation rows (``sdg.augment``: "
                          "offline pairs beside the user's); false when there are none.")
    reason: str
    base_score: float | None = Field(None, description="Held-out nDCG@10 of the base model.")
    heldout_queries: int = 0
    fit_queries: int = 0
    probe_steps: int = Field(0, description="Optimizer steps of all probes together.")
    fixed_steps: int = Field(0, description="Steps of the fixed schedule's run (the budget's unit).")
    probe_seconds: float = Field(0.0, description="Wall-clock seconds of the search (probes and their scoring), "
                                 "spent before the final run; the train result's train_seconds are the final run's.")
    reused_probes: int = Field(0, description="Probes taken from the journal of an interrupted earlier attempt of "
                               "this search (train.work_dir) instead of being trained again.")
    journal: str = Field("", description="The search's journal folder (deleted once the step saved its model).")
    trials: list[ScheduleTrial] = Field(default_factory=list)


class TrainResult(StageResult):
    stage: ClassVar[str] = "train"
    base_model: str
    model: dict[str, Any] = Field(default_factory=dict, description="The ``model`` settings (pooling, attention, "
                                  "padding, remote code) the base model was loaded with.")
    prompts: dict[str, str]
    final_loss: float
    loss_history: list[LossPoint]
    train_seconds: float
    examples_per_second: float
    device: str
    precision: str
    base_weight: float = Field(description="WiSE-FT weight of the base model in the saved weights (0 = none).")
    processes: int
    schedule: ScheduleChoice | None = Field(None, description="The schedule train.schedule chose (None: before it "
                                            "was recorded).")
    resumed_from_step: int = Field(0, description="Steps of the final run restored from the checkpoint of an "
                                   "interrupted attempt (train.checkpoint_minutes) instead of trained again; "
                                   "train_seconds and examples_per_second count the steps trained here.")


class ExternalEvaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    base: dict[str, float]
    finetuned: dict[str, float]
    delta: dict[str, float]
    counts: dict[str, int]


class EvaluationResult(StageResult):
    """Base vs fine-tuned metrics on the held-out split (and an external BEIR folder); ``evaluation.json``."""

    stage: ClassVar[str] = "evaluate"
    primary_metric: str
    base: dict[str, float]
    finetuned: dict[str, float]
    delta: dict[str, float]
    external: ExternalEvaluation | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    reused_base_embeddings: bool = False
    device: str = Field("", description="Device kind the numbers were computed on (cpu, cuda, mps): the gate "
                        "compares only numbers computed on one device kind, so rounding cannot decide a tie.")
    by_dimension: dict[int, dict[str, dict[str, float]]] = Field(
        default_factory=dict, description="A model trained with train.matryoshka_dims: for each of those dimensions "
        "d, {'base': metrics, 'finetuned': metrics} of the first d dimensions of the same embeddings, renormalised "
        "(embedforge.retrieval.dimensions.truncate); empty otherwise.")


class RankedHit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="Chunk id (chunk-level query) or doc id (document-level query).")
    score: float


class QueryEvaluation(BaseModel):
    """One eval query's scores and top rankings under both models (a line of ``per_query.jsonl``, or of
    ``external_per_query.jsonl`` for a query of the external collection, judged per document)."""

    model_config = ConfigDict(extra="forbid")
    query_id: str
    query: str
    relevance: Literal["chunk", "document"]
    relevant: list[str] = Field(description="The judged-relevant chunk ids (or doc ids, document-level).")
    query_type: str | None = Field(None, description="LLM pairs' meta.query_type; None for other generators.")
    reasoning_type: str | None = Field(None, description="LLM pairs' meta.reasoning_type.")
    source: str = ""
    base: dict[str, float]
    finetuned: dict[str, float]
    base_ranking: list[RankedHit]
    finetuned_ranking: list[RankedHit]


class ExportResult(StageResult):
    stage: ClassVar[str] = "export"
    dim: int
    opset: int
    file_size: int
    pooling: str
    exporter: str
    files: list[str]
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    parity_samples: int


class RegistryRecord(StageResult):
    """The registered model version (``registry.json``)."""

    stage: ClassVar[str] = "register"
    tracking_uri: str = Field(description="Credentials redacted.")
    experiment_id: str
    experiment: str
    run_id: str
    model_name: str
    version: str
    source: str
    artifact_uri: str
    primary_metric: str
    primary_metric_value: float | None


class GainInterval(BaseModel):
    """The paired evidence of one comparison: the mean per-query gain (in the metric's good direction) and its
    bootstrap confidence interval over the ``n`` queries both models were scored on."""

    model_config = ConfigDict(extra="forbid")
    mean: float
    low: float
    high: float
    n: int = Field(ge=0, description="Queries paired.")


class Decision(StageResult):
    """The gate's verdict and the numbers behind it (``decision.json``)."""

    stage: ClassVar[str] = "gate"
    promote: bool
    reason: str = Field(description="One human sentence with the numbers.")
    metric: str
    greater_is_better: bool
    challenger: float = Field(description="The fine-tuned model's value.")
    base_value: float
    champion_value: float | None = None
    margin: float = Field(description="Gain over base in the metric's good direction (positive = better).")
    champion_margin: float | None = Field(None, description="Gain over the champion (positive = better).")
    min_improvement: float = 0.0
    champion_version: str | None = None
    challenger_version: str | None = None
    model_name: str | None = None
    alias: str | None = None
    eval_set: str = Field("held_out", description="Which numbers were compared: held_out, or external:<path>.")
    champion_metrics: dict[str, float] | None = Field(None, description="The champion re-evaluated on this run's set.")
    challenger_rerun: dict[str, float] | None = Field(
        None, description="The challenger re-evaluated by the gate next to the champion, when evaluate computed its "
        "numbers on another device kind; the champion comparison then uses these.")
    device: str = Field("", description="Device kind the gate re-evaluated on (empty: no re-evaluation).")
    rule: Literal["interval", "point"] = Field(
        "point", description="The rule that decided: interval (on the per-query evidence) or point (the means; "
        "also the fallback when per-query scores are missing, see fallback).")
    fallback: str = Field("", description="Why gate.rule=interval was not applied (empty when it was, or when the "
                          "point rule was asked for).")
    confidence: float | None = Field(None, description="Coverage of the intervals.")
    non_inferiority_margin: float | None = Field(None, description="How much worse than the champion the "
                                                 "challenger may be (lower bound of vs_champion), interval rule.")
    vs_base: GainInterval | None = Field(None, description="Paired gain of the challenger over base (None: no "
                                         "per-query evidence or fewer than 2 queries).")
    vs_champion: GainInterval | None = Field(None, description="Paired gain of the challenger over the champion.")


class PromotionRecord(StageResult):
    """What promote did (``promotion.json``)."""

    stage: ClassVar[str] = "promote"
    promoted: bool
    alias: str
    version: str
    previous_version: str | None
    model_name: str
    triton_model_name: str
    triton_repo: str
    triton_version_dir: str
    metric: str
    value: float
    promoted_at: str
    reason: str
    published_to: str | None = None
    rollout: dict[str, Any] | None = None


RESULT_TYPES: dict[str, type[StageResult]] = {
    t.stage: t for t in (IngestResult, SdgResult, ValidationResult, MineResult, TrainResult, EvaluationResult,
                         ExportResult, RegistryRecord, Decision, PromotionRecord)
}


class ValidationCheck(BaseModel):
    """One data-quality check of ``validation.json`` (extra fields, e.g. ``kwargs``, are kept)."""

    model_config = ConfigDict(extra="allow")
    check: str
    expectation: str = ""
    success: bool
    unexpected_count: int = 0
    observed_value: Any = None
    examples: list[dict[str, Any]] = Field(default_factory=list)


class ValidationReport(BaseModel):
    """The validate stage's ``validation.json``: overall success, GX statistics and every check."""

    model_config = ConfigDict(extra="allow")
    success: bool
    statistics: dict[str, Any] = Field(default_factory=dict)
    results: list[ValidationCheck] = Field(default_factory=list)


def read_per_query(evaluation_dir: str | Path, external: bool = False) -> list[QueryEvaluation]:
    """The per-query records of an evaluation artifact: of its held-out queries, or with ``external`` of the
    external collection's (InputError when it has none, e.g. an older one)."""
    name = EXTERNAL_PER_QUERY_FILE if external else PER_QUERY_FILE
    return read_records(Path(evaluation_dir) / name, QueryEvaluation)


def read_validation_report(validation_dir: str | Path) -> ValidationReport:
    """The checks of a validation artifact's ``validation.json`` (InputError when missing or malformed)."""
    path = Path(validation_dir) / VALIDATION_FILE
    raw = read_json(path)
    try:
        return ValidationReport.model_validate(raw)
    except ValueError as exc:
        raise InputError(f"{path} is not a validation report: {str(exc).splitlines()[0]}") from None

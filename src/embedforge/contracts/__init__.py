"""The data contracts between stages: records, file names, manifests and typed stage results.

Every artifact folder carries a ``manifest.json`` (:mod:`.manifest`: schema version, stage, counts, timings,
upstream inputs and their sha256, effective config, and the stage's typed result from :mod:`.results`) written
atomically and last, so a half-written artifact is never mistaken for a finished one. Stages, components and the
runner read one another's results only through :func:`read_result` / :func:`read_manifest` and the record
readers below; file names live only in :mod:`.files`.

Artifact folders:

=============  ====================================================================================
chunks         ``chunks.jsonl`` (:class:`Chunk`)
pairs          ``pairs.jsonl`` (:class:`Pair`)
validation     ``validation.json`` (Great Expectations result, summarised)
mined          ``train.jsonl`` (``anchor, positive, negative_1..n``; sentence-transformers column order),
               ``embeddings.npy`` + ``embedding_ids.json`` (base-model chunk embeddings, reused by evaluate;
               :func:`read_embeddings`)
model          a sentence-transformers folder
evaluation     ``evaluation.json`` (:class:`EvaluationResult`), ``per_query.jsonl`` (:class:`QueryEvaluation`;
               with an external collection also ``external_per_query.jsonl``) + ``beir/`` (the eval split in
               BEIR layout)
onnx           ``model.onnx``, tokenizer files, ``parity.json``
registry       ``registry.json`` (:class:`RegistryRecord`)
decision       ``decision.json`` (:class:`Decision`)
triton         ``<model_name>/config.pbtxt``, ``<model_name>/<version>/model.onnx``,
               ``<model_name>/<version>/tokenizer/``, ``promotion.json`` (:class:`PromotionRecord`)
=============  ====================================================================================
"""

from embedforge.contracts.embeddings import read_embeddings  # noqa: F401
from embedforge.contracts.files import (  # noqa: F401
    BEIR_DIR,
    CHUNKS_FILE,
    DECISION_FILE,
    EMBEDDING_IDS_FILE,
    EMBEDDINGS_FILE,
    EVALUATION_FILE,
    EXTERNAL_PER_QUERY_FILE,
    MANIFEST,
    ONNX_FILE,
    PAIRS_FILE,
    PARITY_FILE,
    PER_QUERY_FILE,
    PROMOTION_FILE,
    REGISTRY_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    atomic_write_text,
    content_sha256,
    fingerprint,
    iter_jsonl,
    iter_text_lines,
    not_utf8,
    read_json,
    read_records,
    sha256_file,
    write_json,
    write_jsonl,
)
from embedforge.contracts.manifest import (  # noqa: F401
    REPORT_FILES,
    SCHEMA_VERSION,
    Manifest,
    StageTimer,
    has_manifest,
    read_manifest,
    read_result,
    report_file,
)
from embedforge.contracts.records import (  # noqa: F401
    Chunk,
    Pair,
    Record,
    Split,
    TrainExample,
    read_chunks,
    read_pairs,
    read_train_examples,
)
from embedforge.contracts.results import (  # noqa: F401
    PAIR_KINDS,
    RESULT_TYPES,
    AppliedPolicy,
    Decision,
    EvaluationResult,
    ExportResult,
    ExternalEvaluation,
    GainInterval,
    IngestResult,
    LossPoint,
    MinedPolicy,
    MineResult,
    PairKind,
    PairPolicy,
    PromotionRecord,
    QueryEvaluation,
    RankedHit,
    RegistryRecord,
    ScheduleChoice,
    ScheduleTrial,
    SdgResult,
    StageResult,
    TrainResult,
    ValidationCheck,
    ValidationReport,
    ValidationResult,
    read_per_query,
    read_validation_report,
)

"""One pydantic model per stage and ``PipelineConfig`` holding them (with the CPU/GPU profiles)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from embedforge import names
from embedforge.config.base import (
    DEFAULT_BASE_MODEL,
    MAX_BATCH,
    MAX_SEED,
    StageConfig,
    each_within,
    http_url,
)
from embedforge.config.encode import EncodeConfig
from embedforge.config.llm import LlmSdgConfig
from embedforge.config.train import TrainConfig

#: Largest cut-off k of the evaluation (results ranked per query).
MAX_K = 100_000
#: Largest batch or sequence of a TensorRT optimisation profile's (batch, sequence) shapes.
MAX_SHAPE = 1 << 20
#: Names that become a folder, an MLflow registry name or alias: checked at load (embedforge.names).
TritonModelName = Annotated[str, AfterValidator(names.triton_model_name)]
RegistryModelName = Annotated[str, AfterValidator(names.registry_model_name)]
RegistryAlias = Annotated[str, AfterValidator(names.registry_alias)]
ExperimentName = Annotated[str, AfterValidator(names.experiment_name)]
#: The metrics evaluate computes, as the first part of ``metric@k`` (gate.metric, evaluate.primary_metric).
METRICS = ("ndcg", "recall", "map", "precision", "mrr")


class IngestConfig(StageConfig):
    sentences_per_chunk: int = Field(5, ge=1, le=100, description="Sentences per chunk.")
    min_chunk_chars: int = Field(50, ge=1, le=100_000, description="Chunks shorter than this are merged into the previous one or dropped.")
    max_chunk_tokens: int = Field(256, ge=16, le=8192, description="Hard cap in tokens of the base model's tokenizer.")
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Fraction of documents held out for evaluation.")
    seed: int = Field(13, ge=0, le=MAX_SEED, description="Seed of the document-level train/eval split.")
    extensions: list[str] = Field(
        default_factory=lambda: [".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".docx", ".pptx"],
        description="File suffixes read from a corpus folder (case-insensitive, leading dot optional); other files "
        "are skipped. .html/.htm, .md and .rst are converted from markup (title and text); .pdf, .docx and .pptx "
        "through the documents extra (pip install 'embedforge[documents]', in the images), PDF pages and PPTX "
        "slides kept as chunk pages; any other suffix is read as plain text. Not used for a BEIR corpus.jsonl.")
    section_chars: int = Field(
        200_000, ge=10_000, le=10_000_000, description="Longest document in characters: a longer one becomes "
        "several documents (sections, cut at paragraph breaks where possible) that the train/eval split treats "
        "apart. Plain-text files are read in blocks of at most 200k characters whatever this is.")
    follow_external_symlinks: bool = Field(
        False, description="Read a corpus folder's symbolic links to files outside that folder. Off: they are "
        "skipped and counted (external_symlinks_skipped in the ingest manifest), so a link cannot pull a file "
        "from elsewhere on the machine into the corpus unnoticed. Links to files inside the folder are always "
        "read; linked folders are never entered.")


class SdgConfig(StageConfig):
    generator: Literal["offline", "llm"] = Field(
        "offline", description="offline: pairs from the documents themselves, no LLM (inverse cloze + titles; "
        "embedforge.stages.sdg.offline); llm: an LLM writes and judges question/answer pairs (embedforge.stages.sdg.llm).")
    queries_per_chunk: int = Field(1, ge=0, le=10, description="Offline: inverse-cloze queries per chunk.")
    title_queries: bool = Field(True, description="Offline: use document titles/headings as document-level queries.")
    ict_remove_prob: float = Field(1.0, ge=0.0, le=1.0, description="Offline: probability the query sentence is removed "
                                   "from the training positive (so the model must match meaning, not copy words).")
    title_strip: bool = Field(True, description="Offline: remove a title that the document repeats (heading or first "
                              "sentence) from the training positive of its title query.")
    min_query_words: int = Field(4, ge=1, le=64, description="Offline: fewest words of an inverse-cloze query sentence, "
                                 "and of the chunk text left without it; a repeated title is cut from its training "
                                 "positive only when at least this many words remain.")
    max_pairs: int = Field(20000, ge=1, le=10_000_000, description="Upper bound on pairs generated (train+eval).")
    seed: int = Field(13, ge=0, le=MAX_SEED, description="Seed of pair generation: offline sentence picks, positive removal and each "
                      "document's order under max_pairs (seeded per chunk or document, so independent of the "
                      "others); LLM: the bundle order of bundle_strategy=random and the retry jitter.")
    byo_split: Literal["majority", "any_eval", "train_positives"] = Field(
        "majority", description="Bring-your-own pairs whose positives lie in both splits: majority = the split holding most "
        "of them, keeping only its positives; any_eval = a pair with any eval-document positive is an eval pair; "
        "train_positives = a pair with any train-document positive is a train pair keeping only those positives.")
    augment: float = Field(
        0.0, ge=0, le=10, description="With bring-your-own pairs: also make offline pairs (inverse cloze + titles, "
        "the knobs above) from the TRAIN documents, at most this x the user's train pairs' judged positives (and at "
        "most max_pairs), as augmentation rows (unsupervised in-domain text beside the supervised pairs). With "
        "train.schedule=auto they are trained on only where probes show they help the user's held-out queries; "
        "with the fixed schedule always. 0 = none; the gpu profile sets 1 (GPU_PROFILE).")
    llm: LlmSdgConfig = Field(default_factory=LlmSdgConfig)


class ValidateConfig(StageConfig):
    min_query_chars: int = Field(3, ge=1, le=10_000, description="Shortest query in characters; a shorter one fails the "
                                 "query_length check.")
    max_query_chars: int = Field(2000, ge=10, le=1_000_000, description="Longest query in characters; a longer one fails the "
                                 "query_length check.")
    min_train_pairs: int = Field(10, ge=1, le=1_000_000_000, description="Fewest train-split pairs; with fewer the run fails before "
                                 "mining (check min_train_pairs).")
    min_eval_pairs: int = Field(5, ge=0, le=1_000_000_000, description="Fewest eval-split pairs; with fewer the run fails before "
                                "mining (check min_eval_pairs). 0 = no minimum here (evaluate still needs one eval "
                                "pair).")
    unique_queries: bool = Field(True, description="Fail on a query repeated within a split, compared lower-cased "
                                 "with whitespace collapsed (check unique_queries_per_split). Bring-your-own pairs "
                                 "never fail it: sdg merges lines that share a query.")
    max_examples: int = Field(5, ge=1, le=1000, description="Example rows kept per failed check in validation.json (the error line quotes two).")

    @model_validator(mode="after")
    def _length_range(self) -> ValidateConfig:
        if self.min_query_chars > self.max_query_chars:
            raise ValueError(f"min_query_chars ({self.min_query_chars}) is above max_query_chars "
                             f"({self.max_query_chars}): no query could pass")
        return self


class MineConfig(StageConfig):
    """Hard-negative mining. How many negatives a pair gets, and whether the consistency filter applies, depends on
    the kind of source that made it (embedforge.contracts.policy): ``offline_*`` for the offline generator's pairs, the
    plain fields for every other source."""

    num_negatives: int = Field(4, ge=0, le=64, description="Negatives per example (the pair's own, then mined ones) "
                               "for bring-your-own and LLM pairs.")
    margin: float = Field(0.0, ge=0.0, le=1.0, description="Positive-aware margin (NV-Retriever): drop candidates "
                          "scoring above margin x positive score, e.g. 0.95. 0 = off (default): the top candidates "
                          "that are not judged positives, whatever their score (sentence-transformers' "
                          "mine_hard_negatives default).")
    skip_top: int = Field(0, ge=0, le=64, description="Mined candidates skipped before the negatives are taken "
                          "(sentence-transformers' range_min): the few best unjudged documents are the likeliest "
                          "to be relevant ones nobody judged (false negatives). 0 = none.")
    candidates: int = Field(50, ge=1, le=10_000, description="Nearest neighbours searched per query.")
    max_positives_per_pair: int = Field(200, ge=1, le=1000, description="Training rows per pair at most (one per "
                                        "top-grade positive); train samples train.positives_per_query of a query's "
                                        "rows per epoch, a different window each epoch.")
    train_grades: Literal["top", "all"] = Field(
        "all", description="Graded pairs: train on every grade > 0 as a positive, or on the top grade only (lower "
        "grades then neither positive nor negative); all (default) trained better models than top on graded "
        "judgements.")
    margin_reference: Literal["positive", "best_positive"] = Field(
        "best_positive", description="Score the margin multiplies: each example's own positive, or the best-scoring positive "
        "of the query (pairs with several positives).")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="Texts per encoding batch when the base model embeds the corpus "
                            "chunks, the train queries and the positives' own texts.")
    use_gpu: bool = Field(True, description="Use faiss GPU resources when faiss-gpu and a GPU are present.")
    encode: EncodeConfig = Field(default_factory=EncodeConfig, description="How the base model embeds the "
                                 "chunks, queries and positives (ONNX Runtime or PyTorch on a CPU).")
    offline_num_negatives: int = Field(
        0, ge=0, le=64, description="Negatives per example for the OFFLINE generator's pairs (inverse cloze, "
        "titles). 0 = in-batch negatives only: a generated query's base-model neighbours are mostly relevant too, "
        "so mined ones would mostly be false negatives.")
    offline_consistency_rank: int = Field(
        10, ge=0, le=10_000, description="Round-trip consistency filter for the OFFLINE generator's pairs: keep a pair only if "
        "the base model ranks its positive within this many results of the corpus, the pair's own documents left "
        "out (0 = off). Drops generated queries too vague to find their passage.")


class ModelConfig(StageConfig):
    """How a base model folder becomes an embedder (embedforge.retrieval.loading). ``auto``: what the folder says (modules.json,
    1_Pooling/config.json, config.json), else the architecture's convention (decoders: last token, causal)."""

    pooling: Literal["auto", "mean", "cls", "lasttoken"] = Field(
        "auto", description="auto: the folder's Pooling module, else lasttoken for a causal decoder, mean otherwise.")
    attention: Literal["auto", "causal", "bidirectional"] = Field(
        "auto", description="Decoders only: bidirectional sets is_causal=false in the model config (saved with it).")
    padding_side: Literal["auto", "left", "right"] = Field("auto", description="auto: the tokenizer's own side.")
    trust_remote_code: bool = Field(False, description="Run Python code shipped in the model folder (opt-in only).")


class PromptsConfig(StageConfig):
    query: str = Field("", description="Prefix prepended to queries (saved in the model as prompt 'query').")
    document: str = Field("", description="Prefix prepended to documents (saved in the model as prompt 'document'; "
                          "NIM's input_type 'passage' picks it too).")


class EvaluateConfig(StageConfig):
    k_values: list[int] = Field(
        default_factory=lambda: [1, 5, 10, 100], description="Cut-offs k at which every metric (ndcg, map, recall, "
        "precision, mrr) is computed, together with extra_k; primary_metric and gate.metric must use one of them, "
        "and the largest sets how deep each query's ranking is retrieved.")
    extra_k: list[int] = Field(default_factory=list, description="Additional cut-offs.")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="Texts per encoding batch on a GPU; on CPU at most 32 (larger "
                            "CPU batches only add padding).")
    primary_metric: str = Field(
        "ndcg@10", description="Headline metric: logged as base -> fine-tuned, recorded in evaluation.json, tagged "
        "on the registered version and plotted per query in the report. Must be computed: ndcg, map, recall, "
        "precision or mrr at a k of k_values or extra_k. The gate decides on gate.metric.")
    encode: EncodeConfig = Field(default_factory=EncodeConfig, description="How the models embed the corpus and "
                                 "queries (ONNX Runtime or PyTorch on a CPU), here and in the gate's "
                                 "re-evaluation of the champion.")

    @property
    def all_k(self) -> list[int]:
        return sorted(set(self.k_values) | set(self.extra_k))

    @field_validator("k_values", "extra_k")
    @classmethod
    def _k_range(cls, v: list[int]) -> list[int]:
        each_within(v, 1, MAX_K, "k")
        return v


class ExportConfig(StageConfig):
    opset: int = Field(17, ge=17, le=23, description="ONNX opset of the exported graph; the TorchScript exporter "
                       "produces up to 20, so exporter=auto uses dynamo above it.")
    parity_min_cosine: float = Field(0.999, gt=0, le=1, description="Lowest cosine allowed between the ONNX "
                                     "Runtime and PyTorch embeddings of any parity chunk; below it export fails "
                                     "(ParityError; details in parity.json).")
    parity_samples: int = Field(64, ge=1, le=100_000, description="Corpus chunks embedded by both PyTorch and ONNX Runtime for "
                                "the parity check, spread evenly over text length (every chunk when there are "
                                "fewer).")
    exporter: Literal["auto", "torchscript", "dynamo"] = Field(
        "auto", description="auto: TorchScript exporter (dynamo=False) while torch ships it and opset <= 20, else "
        "dynamo (needs onnxscript).")
    fp16: bool = Field(
        False, description="Also write model_fp16.onnx (weights and activations in FP16, inputs/outputs unchanged), "
        "checked against PyTorch with fp16_min_cosine; serve it with triton.precision=fp16.")
    fp16_min_cosine: float = Field(0.995, gt=0, le=1, description="With fp16: lowest cosine allowed between "
                                   "model_fp16.onnx's and PyTorch's embeddings of any parity chunk "
                                   "(parity_fp16.json); below it export fails.")
    external_data_mb: int = Field(
        1024, ge=0, le=1_000_000, description="Graphs whose weights exceed this many MB keep them in <graph>.onnx.data beside "
        "the graph (an ONNX protobuf file stops at 2 GB: a 1B model needs it); 0: always.")
    tensorrt_plan: bool = Field(
        False, description="Also build model.plan (TensorRT engine, FP16, one optimisation profile from "
        "tensorrt_min/opt/max_shape) where the tensorrt package is importable; elsewhere the step logs why it skips.")
    tensorrt_min_shape: tuple[int, int] = Field((1, 1), description="(batch, sequence) of the profile's minimum.")
    tensorrt_opt_shape: tuple[int, int] = Field((16, 128), description="(batch, sequence) TensorRT optimises for.")
    tensorrt_max_shape: tuple[int, int] = Field((64, 256), description="(batch, sequence) of the profile's maximum.")

    @field_validator("tensorrt_min_shape", "tensorrt_opt_shape", "tensorrt_max_shape")
    @classmethod
    def _shape_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        each_within(v, 1, MAX_SHAPE, "batch and sequence of a shape")
        return v


class RegisterConfig(StageConfig):
    model_name: RegistryModelName = Field(
        "embedforge-embedder", description="MLflow registered model each run's model becomes a new version of; the "
        "gate reads its champion alias, promote moves it. Letters, digits, '_', '.' and '-'.")
    experiment: ExperimentName = Field("embedforge", description="MLflow experiment that holds the register "
                                       "step's run (parameters, metrics, model, evaluation and validation "
                                       "reports); created when missing.")
    tracking_uri: str = Field("", description="Empty: $MLFLOW_TRACKING_URI, else sqlite under the output folder.")


class GateConfig(StageConfig):
    metric: str = Field("ndcg@10", description="Metric the gate compares, as metric@k (ndcg, recall, map, precision "
                        "or mrr); evaluate must compute its k (evaluate.k_values or extra_k).")
    rule: Literal["interval", "point"] = Field(
        "interval", description="How the gate weighs the evidence. interval: on the eval queries' paired scores, "
        "the lower bound of the bootstrap interval (gate.confidence) of the gain over base must be > 0 and >= "
        "min_improvement, and that of the gain over the champion >= -non_inferiority_margin: a gain the eval set "
        "cannot tell from noise is not promoted. point: the mean gains alone (gain over base > 0 and >= "
        "min_improvement, over the champion > 0). Without per-query scores (an older evaluation) the gate decides "
        "by the point rule and says so.")
    min_improvement: float = Field(0.0, ge=0.0, le=1.0, description="Absolute gain over the base model required to "
                                   "promote: of the interval's lower bound (rule interval) or of the mean gain "
                                   "(rule point); the gain must also be above 0.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Coverage of the paired bootstrap intervals of the "
                              "interval rule (0.95: the 2.5th to 97.5th percentile of the resampled mean gains).")
    non_inferiority_margin: float = Field(
        0.01, ge=0.0, le=1.0, description="Interval rule: how much worse than the champion the challenger may be, "
        "judged on the lower bound of the paired challenger-minus-champion interval (0: that bound must be >= 0).")
    bootstrap_resamples: int = Field(2000, ge=100, le=1_000_000, description="Resamples of the eval queries behind "
                                     "each interval (seeded: the same scores give the same interval).")
    greater_is_better: bool = Field(True, description="Direction of gate.metric: true = a higher value is better "
                                    "(every metric evaluate computes); false reverses every gain the gate computes.")
    alias: RegistryAlias = Field("champion", description="MLflow alias of the registered model that marks the "
                       "champion: the gate compares with the version it points at, promote moves it to the new "
                       "version, rollback moves it back.")
    eval_set: Literal["auto", "held_out", "external"] = Field(
        "auto", description="Numbers the gate decides on: held_out = the held-out split of the run's pairs; external "
        "= the --eval-beir collection (human judgements; the champion is re-evaluated on it); auto = external when "
        "the run has one, else held_out. Generated held-out pairs can be easy (e.g. one-chunk documents), so a "
        "human-judged collection, when there is one, is the better judge.")


class TritonConfig(StageConfig):
    model_name: TritonModelName = Field(
        "embedforge_embedder", description="Name of the ensemble Triton serves (text in, embeddings out) that "
        "clients request; its two steps are published as <name>_tokenizer and <name>_onnx. A folder name of the "
        "model repository: letters, digits, '_', '.' and '-', not starting with '.' or '-'.")
    max_batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="max_batch_size of the three models' config.pbtxt: the most "
                                "texts one request may carry and the largest batch the dynamic batcher forms.")
    instance_kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = Field(
        "KIND_AUTO", description="Where Triton runs the embedder's instance: KIND_GPU, KIND_CPU, or KIND_AUTO (a GPU "
        "when the server has one, else the CPU). The tokenizer always runs on the CPU.")
    max_queue_delay_us: int = Field(2000, ge=0, le=60_000_000, description="Microseconds the dynamic batcher of the tokenizer and "
                                    "the embedder may hold a request to batch it with later ones "
                                    "(max_queue_delay_microseconds); 0 = no waiting, only requests already queued "
                                    "are batched.")
    repository_dir: str = Field(
        "", description="Live model repository to publish the promoted version into (the Triton PVC mount on "
        "Kubernetes, e.g. /models). Empty: the version is only in the pipeline's triton_repo artifact.")
    server_url: str = Field(
        "", description="Triton HTTP endpoint (e.g. http://triton.embedforge.svc.cluster.local:8000). Set: promote "
        "has the server load the new version, waits until it is ready and checks one served embedding against the "
        "exported model before it moves the alias; on failure the version is taken out of repository_dir again.")
    ready_timeout_s: float = Field(180.0, gt=0, le=86_400, description="How long promote waits for the served version.")
    keep_versions: int = Field(3, ge=0, le=1000, description="After a promotion, the live repository keeps the new champion, "
                               "the previous one (what `embedforge rollback` goes back to) and this many more of the "
                               "newest versions; older version folders are deleted (none of them is served).")
    replica_urls: list[str] = Field(
        default_factory=list, description="HTTP endpoints of every Triton replica (one per pod). Promote and "
        "rollback load the version on each and probe each; empty: server_url alone (or, with discover_replicas, "
        "every address server_url's host resolves to).")
    discover_replicas: bool = Field(
        False, description="Resolve server_url's host (a headless Service) to all its addresses and treat each as "
        "one replica (same port).")
    embedder_backend: Literal["onnxruntime", "python", "tensorrt_plan"] = Field(
        "onnxruntime", description="How Triton runs the embedder: onnxruntime backend (production); python = the same "
        "model.onnx through onnxruntime in the Python backend (Triton builds without the ORT backend, e.g. the "
        "tests' server); tensorrt_plan = the export's model.plan (needs export.tensorrt_plan).")
    precision: Literal["fp32", "fp16"] = Field("fp32", description="fp16 serves model_fp16.onnx (export.fp16).")
    tensorrt: bool = Field(
        False, description="ONNX Runtime backend only: run the graph through ORT's TensorRT execution accelerator "
        "(optimization.execution_accelerators.gpu_execution_accelerator 'tensorrt').")
    tensorrt_precision: Literal["FP32", "FP16"] = Field(
        "FP16", description="With tensorrt: precision_mode of ORT's TensorRT accelerator, FP16 or FP32 kernels.")
    tensorrt_workspace_bytes: int = Field(1 << 30, ge=1 << 20, le=1 << 40, description="With tensorrt: "
                                          "max_workspace_size_bytes, the scratch GPU memory in bytes TensorRT may "
                                          "use for its engines (default 1 GiB).")
    tensorrt_min_shape: tuple[int, int] = Field((1, 1), description="(batch, sequence) of the TensorRT profile minimum.")
    tensorrt_opt_shape: tuple[int, int] = Field((16, 128), description="(batch, sequence) TensorRT optimises for.")
    tensorrt_max_shape: tuple[int, int] = Field((64, 256), description="(batch, sequence) of the profile maximum.")

    @field_validator("tensorrt_min_shape", "tensorrt_opt_shape", "tensorrt_max_shape")
    @classmethod
    def _shape_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        each_within(v, 1, MAX_SHAPE, "batch and sequence of a shape")
        return v
    tensorrt_cache_dir: str = Field("", description="Engine cache folder on the server (empty: no cache).")

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, v: str) -> str:
        if v:
            http_url(v)
        return v

    @field_validator("replica_urls")
    @classmethod
    def _replica_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            http_url(url)
        return v

    @model_validator(mode="after")
    def _server_needs_repository(self) -> TritonConfig:
        if self.server_url and not self.repository_dir:
            raise ValueError("triton.server_url needs triton.repository_dir: the folder that server serves from")
        if self.replica_urls and not self.server_url:
            raise ValueError("triton.replica_urls needs triton.server_url (clients' endpoint) and repository_dir")
        if self.tensorrt and self.embedder_backend != "onnxruntime":
            raise ValueError("triton.tensorrt is an option of the onnxruntime backend; with embedder_backend="
                             f"{self.embedder_backend} set tensorrt=false")
        return self


#: Compute profile for machines without a GPU: what `embedforge run` changes when ``profile`` resolves to ``cpu``
#: — only for fields the user did not set. It caps the generated pairs and the epochs so that a run of the sample
#: corpus stays short on a few cores, and halves the batch (half the activation memory per step). A run that short
#: takes the higher learning rate the auto schedule would probe (5/3 of train.learning_rate, which was chosen for
#: the GPU's three epochs): at the shipped rate one or two epochs leave the model undertrained (docs/benchmarks.md,
#: "The CPU profile's learning rate"). Bring-your-own pairs are never capped, only the number of epochs and the
#: batch size. The caps trade some quality for time.
CPU_PROFILE: dict[str, dict[str, Any]] = {"sdg": {"max_pairs": 1000},
                                          "train": {"epochs": 2.0, "batch_size": 16, "learning_rate": 5e-5}}
#: What the CPU profile changes instead when the user gives pairs (``--pairs``): one epoch, since their rows carry
#: ``mine.num_negatives`` mined negatives each (several texts more per row than an offline row); its batch and
#: learning rate are CPU_PROFILE's.
CPU_PROFILE_BYO: dict[str, dict[str, Any]] = {"train": {**CPU_PROFILE["train"], "epochs": 1.0}}
#: What the gpu profile changes (fields the user did not set): the learning rate and length chosen from the run's
#: own pairs (``train.schedule.mode=auto``, 2-fold cross-fitted probes), and offline pairs of the user's train
#: documents made beside the user's pairs (``sdg.augment``), which the probes train on only where they help the
#: user's held-out queries: with them, every candidate is probed with and without those rows (several times the
#: fixed run's training steps in all). The search leaves the fixed schedule only where the held-out queries resolve
#: a gain over it (embedforge.stages.train.schedule).
GPU_PROFILE: dict[str, dict[str, Any]] = {"sdg": {"augment": 1.0}, "train": {"schedule": {"mode": "auto"}}}


class PipelineConfig(StageConfig):
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Local folder or Hugging Face id.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="How the base model becomes an embedder "
                               "(pooling, attention, padding, remote code), in every stage that loads it: sdg's "
                               "de-duplication, mine, train and the base model's evaluation alike.")
    profile: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Compute profile: auto = cpu when no CUDA device is visible to `embedforge run`, else gpu; "
        "cpu applies CPU_PROFILE (CPU_PROFILE_BYO with --pairs), gpu GPU_PROFILE, to fields left at their defaults.")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sdg: SdgConfig = Field(default_factory=SdgConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    mine: MineConfig = Field(default_factory=MineConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    register_: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    gate: GateConfig = Field(default_factory=GateConfig)
    triton: TritonConfig = Field(default_factory=TritonConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _model_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("train"), dict) and "model" in data["train"]:
            raise ValueError("train.model.* is now model.* (top level): the base model's pooling, attention, padding "
                             "and trust_remote_code apply to mine and evaluate too; rename train.model.X to model.X")
        return data

    @model_validator(mode="after")
    def _metrics_are_evaluated(self) -> PipelineConfig:
        """gate.metric and evaluate.primary_metric name a metric evaluate computes (else the gate or the report
        would fail after training)."""
        for setting, metric in (("gate.metric", self.gate.metric), ("evaluate.primary_metric", self.evaluate.primary_metric)):
            name, _, k = metric.partition("@")
            if name not in METRICS or not k.isdigit():
                raise ValueError(f"{setting} {metric!r} must look like 'ndcg@10' ({'|'.join(METRICS)})")
            if int(k) not in self.evaluate.all_k:
                raise ValueError(f"{setting} uses k={k}, which evaluate.k_values/extra_k do not compute")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json(by_alias=True, exclude_none=True))  # KFP struct params reject null

    def resolved(self, cuda_available: bool, pairs_given: bool = False) -> tuple["PipelineConfig", dict[str, Any]]:
        """This config with its profile applied, and the ``{"section.field": value}`` the profile changed.

        Args:
            cuda_available: Whether a CUDA device is present (``profile=auto``).
            pairs_given: Whether the run trains on the user's pairs (``CPU_PROFILE_BYO`` instead of ``CPU_PROFILE``;
                the gpu profile is the same either way).
        """
        profile = self.profile if self.profile != "auto" else ("gpu" if cuda_available else "cpu")
        changed: dict[str, Any] = {}
        tree = self.to_dict()
        tree["profile"] = profile
        rules = GPU_PROFILE if profile == "gpu" else CPU_PROFILE_BYO if pairs_given else CPU_PROFILE
        for section, fields in rules.items():
            user_set = getattr(self, section).model_fields_set
            for name, value in fields.items():
                if name not in user_set:
                    tree[section][name] = value
                    changed[f"{section}.{name}"] = value
        train = tree["train"]
        if "sdg.augment" in changed and (train["schedule"].get("mode") != "auto" or (
                train.get("sharding") == "fsdp" and (train.get("base_weight") or 0) > 0)):
            # augmentation rows only where the auto schedule decides whether they help: a fixed one trains on all,
            # and with FSDP-sharded weights and WiSE-FT the search is skipped and they would be left out
            tree["sdg"]["augment"] = self.sdg.augment
            del changed["sdg.augment"]
        return PipelineConfig.model_validate(tree), changed



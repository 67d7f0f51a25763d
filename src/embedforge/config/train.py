"""The train stage's configuration: ``TrainConfig`` and the models it holds (TrainJob, auto schedule, LoRA).

Kept apart from :mod:`embedforge.config.pipeline` because it is the largest stage config and the one most options
are added to; ``PipelineConfig`` imports it from here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from embedforge import names
from embedforge.config.base import MAX_SEED, MAX_TOKENS, StageConfig, each_within


class TrainJobConfig(StageConfig):
    """How the train step runs a multi-node job (``train.nodes`` > 1) as a Kubeflow Trainer TrainJob."""

    runtime: Annotated[str, AfterValidator(names.k8s_name)] = Field("torch-distributed", description="The ClusterTrainingRuntime the TrainJob "
                         "references (Kubeflow Trainer's torchrun runtime installs as `torch-distributed`).")
    image: str = Field("", description="Image of the training nodes; empty: the image the train step runs in "
                       "($EMBEDFORGE_IMAGE, set by the compiled pipeline).")
    namespace: Annotated[str, AfterValidator(lambda v: names.k8s_label(v) if v else v)] = Field(
        "", description="Namespace of the TrainJob; empty: the train step's own namespace.")
    gpus_per_node: int = Field(1, ge=0, le=64, description="GPUs per node (also torchrun processes per node; 0: CPU, one "
                               "process per node).")
    cpu_per_node: Annotated[str, AfterValidator(names.k8s_quantity)] = Field("8", description="CPU of each node as a Kubernetes quantity (e.g. 8 or "
                              "7500m), both request and limit of the node's container.")
    memory_per_node: Annotated[str, AfterValidator(names.k8s_quantity)] = Field("32Gi", description="Memory of each node as a Kubernetes quantity "
                                 "(e.g. 32Gi), both request and limit of the node's container.")
    shared_pvc: Annotated[str, AfterValidator(names.k8s_name)] = Field("embedforge-data", description="ReadWriteMany claim mounted by the train "
                            "step and every node: the step stages the mined rows there and reads the model back.")
    shared_mount: str = Field("/data", pattern=r"^/", description="Where the train step and the nodes mount it "
                              "(an absolute path).")
    timeout_s: float = Field(86400.0, gt=0, le=30 * 86400, description="Fail (and delete the TrainJob) when it has not finished "
                             "by then: a job stuck Pending (no GPUs, no quota) fails clearly instead of hanging.")
    poll_s: float = Field(10.0, gt=0, le=3600, description="Seconds between status reads.")


class ScheduleConfig(StageConfig):
    """How train picks learning rate, temperature and length (embedforge.stages.train.schedule)."""

    mode: Literal["fixed", "auto"] = Field(
        "fixed", description="fixed: train.learning_rate/temperature/epochs as given; auto: probe a few settings on "
        "the run's own train rows (queries held out of them score each probe) and train with the best, with or "
        "without the augmentation rows (sdg.augment). The gpu profile turns auto on where the user left "
        "train.schedule unset (GPU_PROFILE).")
    budget: float = Field(3.0, gt=0, le=10, description="auto: optimizer steps of all probes together, as a multiple "
                          "of the fixed run's steps (the final run comes on top). 3 with 2 folds and 3 candidates: "
                          "every probe as long as the fixed run, on half the queries. With augmentation rows (sdg.augment) "
                          "every candidate is probed again with them, on top of this budget.")
    holdout: float = Field(0.15, gt=0, lt=0.5, description="auto: fraction of the train queries held out to score the "
                           "probes (never the eval split the gate uses).")
    min_holdout_queries: int = Field(8, ge=2, le=1_000_000, description="auto: fewer held-out queries than this (small pair sets): "
                                     "the fixed schedule is used.")
    candidates: list[tuple[float, float]] = Field(
        default_factory=lambda: [(1.0, 1.0), (1.67, 1.0), (0.67, 1.0)],
        description="auto: (learning-rate factor, temperature factor) pairs probed, relative to train.learning_rate "
        "and train.temperature.")
    folds: int = Field(2, ge=1, le=10, description="auto: 1 = one held-out slice (schedule.holdout of the train "
                       "queries); k > 1 = k-fold cross-fitting: the train queries split into k parts, every probe "
                       "trained once per part on the other parts and every train query scored once, held out. "
                       "The budget is shared by all folds; the comparison then has all train queries to go on.")
    confidence: float = Field(0.95, ge=0, lt=1, description="auto: a probe replaces the fixed settings only if its "
                              "held-out gain over their probe has a paired bootstrap interval (this confidence, "
                              "Bonferroni over the checkpoints compared) above 0; 0 = the best mean wins.")
    max_pool: int = Field(3000, ge=10, le=10_000_000, description="auto: texts ranked for each held-out query at most (its own "
                          "positives and negatives first, then other rows' texts).")

    @field_validator("candidates")
    @classmethod
    def _factor_range(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        each_within((f for pair in v for f in pair), 0, 100, "candidate factor", low_open=True)
        return v


class LoraConfig(StageConfig):
    enabled: bool = Field(False, description="Train low-rank adapters (peft LoRA) instead of every weight; they are "
                          "merged into the base weights when the model is saved (embedforge.stages.train.lora).")
    r: int = Field(16, ge=1, le=4096, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, le=1e6, description="Scaling numerator: the update is (alpha / r) x B A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability on each adapter's input during "
                           "training (peft lora_dropout); 0 = none.")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt; auto: every linear layer of the transformer's attention and MLP "
        "blocks (peft's 'all-linear').")


class TrainConfig(StageConfig):
    nodes: int = Field(1, ge=1, le=1024, description="Machines to train on. 1: in the train step's own pod (processes "
                       "workers there); > 1: the train step submits a Kubeflow Trainer TrainJob of this many nodes "
                       "(see train.trainjob and embedforge.cluster.trainjob).")
    trainjob: TrainJobConfig = Field(default_factory=TrainJobConfig)
    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the mined rows; fractions allowed.")
    positives_per_query: int = Field(8, ge=0, le=1_000_000, description="Rows (positives) of one query trained per epoch at most, "
                                     "a different seeded window of its positives each epoch; 0 = all rows every "
                                     "epoch (embedforge.stages.train.positives).")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int = Field(32, ge=2, le=65536, description="Rows per step; each anchor is contrasted with every positive and hard negative of the batch.")
    learning_rate: float = Field(3e-5, gt=0, le=1.0, description="AdamW peak learning rate (after linear warm-up, then "
                                 "lr_schedule's decay).")
    lr_schedule: Literal["cosine", "linear"] = Field(
        "linear", description="Decay after the warm-up: linear to 0 (default, as sentence-transformers' trainer), or "
        "cosine.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW decoupled weight decay on weight matrices (0: none, "
                                "as sentence-transformers' trainer; a small decay gave no quality gain).")
    layer_decay: float = Field(1.0, gt=0, le=1, description="Layer-wise learning-rate decay: layer k of L trains at "
                               "learning_rate x layer_decay^(L - k), embeddings (k = 0) lowest (embedforge.stages.train."
                               "layer_decay); 1 = one learning rate for all.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the run's optimizer steps (rounded) over "
                                "which the learning rate rises linearly from 0 to learning_rate, before "
                                "lr_schedule's decay; 0 = no warm-up.")
    temperature: float = Field(0.05, gt=0, le=1, description="InfoNCE temperature (1/scale).")
    symmetric_loss: bool = Field(False, description="Also rank each positive against the batch's anchors (document "
                                 "to query) and average both directions (embedforge.stages.train.losses).")
    hardness: float = Field(0.0, ge=0, le=20, description="Hardness weighting: alpha x stop-grad(cosine) added to "
                            "every negative's logit, so harder negatives weigh more (embedforge.stages.train.losses); 0 = "
                            "off.")
    grade_power: float = Field(0.0, ge=0, le=4, description="Graded judgements in the loss: a row whose positive "
                               "has relevance grade g weighs g^grade_power in the batch's mean (embedforge.stages.train."
                               "losses); 0 = every row alike. Ungraded rows are grade 1.")
    matryoshka_dims: list[int] = Field(
        default_factory=list, description="Matryoshka embeddings (embedforge.stages.train.losses.MatryoshkaLoss): the "
        "contrastive loss is also computed on the first d dimensions of every embedding (renormalised) for each d "
        "here, and the losses summed, so that a prefix of the vector is an embedding of its own. Strictly "
        "descending positive ints, each at most the model's dimension (checked when the model is loaded), e.g. "
        "[768, 512, 256, 128, 64]; include the full dimension to keep training it. Empty: off. Saved with the "
        "model; evaluate reports nDCG@10 at each, serving accepts `dimensions`.")
    matryoshka_weights: list[float] = Field(
        default_factory=list, description="Weight of each train.matryoshka_dims entry's loss in the sum (same "
        "length); empty: all 1.")
    soup: int = Field(1, ge=1, le=16, description="Model soup: train this many runs from the base weights, seeds "
                      "seed, seed+1000, ... (own batch orders and dropout; far apart, so that neighbouring seeds' "
                      "soups share no run), and save the average of their weights (embedforge.stages.train.soup). n x the "
                      "training time.")
    average_last: float = Field(0.0, ge=0, lt=1, description="Tail averaging: save the uniform average of the "
                                "weights at up to 10 evenly spaced steps of this last fraction of the run (the last "
                                "step included; embedforge.stages.train.soup.tail_steps) instead of the last step's; 0 = off. "
                                "Free in time, one CPU copy of the weights.")
    max_seq_length: int = Field(256, ge=8, le=1 << 20, description="Longest input in tokens (prompt and special tokens "
                                "included); longer texts are truncated. Capped at what the base model's position "
                                "embeddings allow and saved with the model, so export, evaluation and Triton "
                                "truncate alike.")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Gradients are clipped to this total L2 norm before every "
                                 "optimizer step (torch clip_grad_norm_).")
    micro_batch_tokens: int | None = Field(
        None, ge=64, le=MAX_TOKENS, description="Padded tokens per forward pass (texts x longest text); texts are length-sorted "
        "inside the contrastive batch and the loss still sees the whole batch. Unset: 262144 on CUDA (each tower "
        "in one or two forwards: fewer kernel launches), 4096 on CPU (little padding).")
    processes: int = Field(1, ge=0, le=1024, description="Training processes on this machine, one per GPU, the global batch "
                           "split over them (torchrun, embedforge.stages.train.distributed): 1 = this process only; 0 = one "
                           "per visible GPU. Worth it when one step is compute-bound (large models or batches).")
    compile: bool = Field(False, description="torch.compile the encoder's forward (dynamic shapes): fewer, fused "
                          "kernels and less Python per step on a GPU, after a one-off compilation at the start of "
                          "the run; worth it for long runs of plain steps. Not with the cached step of a large "
                          "model: every chunk length recompiles, so compiling can take longer than the steps it "
                          "speeds up.")
    base_weight: float | None = Field(
        None, ge=0.0, lt=1.0, description="WiSE-FT: save (1 - w) x fine-tuned + w x base weights (0 = the plain "
        "fine-tuned model). Unset: the base weight of the pair policy (embedforge.contracts.policy) of the source kind "
        "that made most rows, as the mine stage recorded it: 0.5 for the offline generator, else 0.")
    kernels: Literal["auto", "liger", "none"] = Field(
        "none", description="Fused GPU kernels for decoder encoders (embedforge.stages.train.kernels): Liger's "
        "RMSNorm, SwiGLU and RoPE, one pass each instead of several memory-bound ones; weights and the saved model "
        "are unchanged. auto: on CUDA for the model types liger-kernel supports (Llama, Mistral, Qwen, Gemma ...) "
        "when it is installed (the GPU image has it), eager elsewhere; liger: required; none: eager kernels only "
        "(the default until auto is measured on a card with embedforge run).")
    packing: Literal["auto", "on", "off"] = Field(
        "auto", description="Sequence packing in the training forward (embedforge.stages.train.packing): each "
        "micro-batch's texts concatenated into one row, attention kept per text, so no FLOPs go to padding. "
        "auto: on for models that support it (Llama/Qwen/Mistral-style decoders) on CUDA; on: wherever supported.")
    work_dir: str = Field("", description="Folder for what must outlive an interrupted train step — a preempted pod, "
                          "a KFP retry, `embedforge run --resume` — so its rerun does not start over: the schedule "
                          "search's finished probes and the final run's checkpoints (one subfolder each, named by a "
                          "hash of rows, settings and base model; removed when the step saves its model). `embedforge "
                          "run` uses <out>/train_work, the compiled Kubernetes pipeline the data volume; empty: a "
                          "private folder (mode 0700) of this user in the system temp folder.")
    checkpoint_minutes: float = Field(30.0, ge=0, le=7 * 24 * 60, description="Save the final run's state (weights, optimizer, "
                                      "learning-rate schedule, random streams, loss history) to train.work_dir at "
                                      "most this often; a rerun of the interrupted step continues from the last one "
                                      "and trains the model an uninterrupted run trains (with train.sharding=fsdp "
                                      "every process writes and reads its own shards). 0: never. Not with "
                                      "train.soup > 1.")
    log_every_steps: int = Field(10, ge=0, le=1_000_000, description="Every this many optimizer steps (and at the "
                                 "last) the step logs loss, learning rate, throughput (samples/s, tokens/s) and, on "
                                 "a GPU, memory to a live MLflow run of its own (a child of the pipeline's run, in "
                                 "register.experiment at the tracking URI; with MLflow's system metrics), and a "
                                 "progress line with the ETA at most every 10 s. 0: no live MLflow run.")
    seed: int = Field(13, ge=0, le=MAX_SEED, description="Seed of the run: the random streams (Python, NumPy, torch; rank r of a "
                      "multi-process run adds r for dropout), the batch order and positive windows, and the auto "
                      "schedule's held-out queries and folds. Soup run k uses seed + 1000 x k.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast dtype of the forward passes: auto = bf16 on a CUDA device that supports it, "
        "else fp32; fp16 (CUDA only) adds loss scaling. The dtype of the weights themselves is weights_dtype.")
    cached: bool | None = Field(
        None, description="Cached contrastive batches (GradCache, embedforge.stages.train.cached): the batch is embedded "
        "without gradients chunk by chunk, the loss's embedding gradients cached, then each chunk re-forwarded and "
        "back-propagated, so memory is that of one chunk whatever the batch; same gradients, one extra forward. "
        "Unset (auto): off on CPU; on CUDA for the steps whose tokens would not fit the device in a plain step "
        "(embedforge.stages.train.memory estimates activation bytes per token from the model); elsewhere for steps of "
        "more than 4 chunks of tokens.")
    cache_chunk_tokens: int | None = Field(
        None, ge=64, le=MAX_TOKENS, description="Padded tokens per chunk of a cached step. Unset: on CUDA the plain step's capacity "
        "on the card (embedforge.stages.train.memory; one chunk's activations are alive at a time, and larger chunks are "
        "faster), 16384 where that is unknown or under 1024; the micro-batch budget on CPU.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each transformer layer's activations in backward instead of keeping them "
        "(Hugging Face gradient checkpointing, non-reentrant): about a third more compute, a fraction of the memory.")
    weights_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype of the weights being trained, and so of gradients and AdamW states. bf16 halves "
        "their memory; no fp32 master copy is kept, so updates much smaller than a weight are rounded away (use a "
        "learning rate >= 1e-5); the saved model is bf16.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    sharding: Literal["none", "fsdp"] = Field(
        "none", description="With processes > 1: none = every process holds the whole model and the gradients are "
        "all-reduced; fsdp = FSDP2 (embedforge.stages.train.fsdp) shards weights, gradients and optimizer states over the "
        "processes, for models that do not fit one device with their optimizer; its steps are always cached.")

    def resolved_cache_chunk_tokens(self, device_type: str, capacity: int | None = None) -> int:
        """``cache_chunk_tokens``, or its default for the device type; ``capacity``: the plain step's capacity in
        tokens on this device (:func:`embedforge.stages.train.memory.plain_step_tokens`), None when unknown."""
        if self.cache_chunk_tokens is not None:
            return self.cache_chunk_tokens
        if device_type != "cuda":
            return self.resolved_micro_batch_tokens(device_type)
        return capacity if capacity is not None and capacity >= 1024 else 16384

    def resolved_micro_batch_tokens(self, device_type: str) -> int:
        """``micro_batch_tokens``, or its default for the device type (``"cuda"``, ``"cpu"``, ...)."""
        if self.micro_batch_tokens is not None:
            return self.micro_batch_tokens
        return 262144 if device_type == "cuda" else 4096

    @field_validator("matryoshka_dims")
    @classmethod
    def _descending_dims(cls, v: list[int]) -> list[int]:
        each_within(v, 1, 1 << 20, "Matryoshka dimension")
        if any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError(f"train.matryoshka_dims {v}: strictly descending positive ints, e.g. [384, 128, 64]")
        return v

    @field_validator("matryoshka_weights")
    @classmethod
    def _weight_range(cls, v: list[float]) -> list[float]:
        each_within(v, 0, 1e6, "Matryoshka weight")
        return v

    @model_validator(mode="after")
    def _matryoshka_weights(self) -> "TrainConfig":
        """One weight per Matryoshka dimension, each >= 0 and not all 0."""
        w = self.matryoshka_weights
        if w and (len(w) != len(self.matryoshka_dims) or any(x < 0 for x in w) or not any(w)):
            raise ValueError(f"train.matryoshka_weights {w}: one weight >= 0 per train.matryoshka_dims entry "
                             f"({len(self.matryoshka_dims)}), not all 0; or empty for all 1")
        return self

    @model_validator(mode="after")
    def _average_last_unsharded(self) -> "TrainConfig":
        """Tail averaging keeps CPU copies of the whole model's weights; FSDP ranks hold only their shards."""
        if self.average_last and self.sharding == "fsdp":
            raise ValueError("train.average_last needs the whole model on each process; it cannot run with "
                             "train.sharding=fsdp: set train.average_last=0 or train.sharding=none")
        return self

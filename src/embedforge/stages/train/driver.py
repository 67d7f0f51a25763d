"""The train stage's entry point, :func:`run`: glue over the package's parts, in the order a run needs them.

read rows (:mod:`.batching`) -> schedule (:mod:`.schedule`, its probes journaled: :mod:`.probe_journal`) -> model,
optimizer, learning-rate schedule, stepper (:mod:`.setup`) -> plan of batches (:mod:`.batching`) -> continue from a
checkpoint (:mod:`.checkpoint`) -> steps (:mod:`.step`), loss history (:mod:`.loss_log`), checkpoints -> WiSE-FT
(:mod:`.wise_ft`) -> save the model and ``manifest.json`` -> delete the step's kept work (:mod:`.work`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import embedforge.stages.train.distributed as distributed
import embedforge.stages.train.fsdp as fsdp
import embedforge.stages.train.schedule as schedule
import embedforge.stages.train.work as work
from embedforge.config import (
    DEFAULT_BASE_MODEL,
    ModelConfig,
    PromptsConfig,
    TrainConfig,
)
from embedforge.contracts import Manifest, StageTimer, TrainExample
from embedforge.contracts.positives import known_positives
from embedforge.registry.live_run import LiveRun
from embedforge.retrieval.dimensions import record_trained_dims
from embedforge.stages.train.batching import epoch_batches, plan_steps, read_examples
from embedforge.stages.train.checkpoint import Checkpoints
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.lora import add_adapters, merge_adapters
from embedforge.stages.train.loss_log import LossLog
from embedforge.stages.train.setup import (
    compile_encoder,
    load_for_training,
    make_stepper,
    prepare_model,
)
from embedforge.stages.train.soup import WeightAverage, tail_steps
from embedforge.stages.train.step import Stepper
from embedforge.stages.train.telemetry import Telemetry
from embedforge.stages.train.wise_ft import interpolate_weights, resolve_base_weight

log = logging.getLogger(__name__)

STAGE = "train"


def run_process(
    mined_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    base_model: str = DEFAULT_BASE_MODEL,
    prompts: PromptsConfig | None = None,
    model_cfg: ModelConfig | None = None,
) -> Manifest | None:
    """Fine-tune ``base_model`` on the mined rows in this process and save a sentence-transformers folder.

    The stage's entry is :func:`embedforge.stages.train.run`, which calls this here, under torchrun or on the nodes
    of a TrainJob. Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains one replica on its share of each global batch
    (:mod:`embedforge.stages.train.distributed`); rank 0 saves the model and returns the manifest, the others return None.

    Args:
        mined_dir: Mine artifact folder holding ``train.jsonl`` (``anchor, positive, negative_1..n``).
        out_dir: Output folder: the saved model (``SentenceTransformer(out_dir)`` loads it) + ``manifest.json``.
        cfg: Training settings (epochs, batch_size, learning_rate, temperature, ...).
        base_model: Model folder or id to start from.
        prompts: Query/document prefixes used in training and saved in the model.

    Returns:
        The written manifest (counts: examples, steps and epochs of one run, runs; final_loss and loss_history
        of the last run, seconds,
        examples_per_second, device, precision, base_weight, processes).

    Raises:
        InputError: ``train.jsonl`` is missing or has fewer than 2 rows; the mine manifest has no pair policy.
        ConfigError: The base model cannot be loaded; fp16 without CUDA.
    """
    timer = StageTimer(STAGE)
    prompts = prompts or PromptsConfig()
    examples = read_examples(mined_dir)
    known = known_positives(mined_dir, examples)
    dist_ctx = distributed.from_env()
    if dist_ctx.enabled:  # under torchrun: one process per device, the global batch split over them
        from embedforge.retrieval.encode import pick_device

        cfg = cfg.model_copy(update={"device": distributed.init(dist_ctx, pick_device(cfg.device))})
    choice = schedule.choose(mined_dir, examples, known, cfg, base_model, prompts, dist_ctx, model_cfg)
    cfg = schedule.apply(cfg, choice)
    examples = schedule.rows_for(examples, choice)  # without the augmentation rows unless the schedule kept them
    base_weight = resolve_base_weight(cfg, mined_dir)
    checkpoints = _checkpoints(examples, known, cfg, base_model, prompts, model_cfg, base_weight, dist_ctx)
    live = LiveRun.open({"train": cfg.model_dump(mode="json"), "prompts": prompts.model_dump(), "base_model": base_model,
                         "processes": dist_ctx.world}, base_model, enabled=dist_ctx.is_main and cfg.log_every_steps > 0)
    soup, runs = WeightAverage(), []
    try:
        for k in range(cfg.soup):  # train.soup: runs with seeds seed, seed + 1000, ... averaged (train.soup)
            done = _train_once(examples, known, cfg.model_copy(update={"seed": cfg.seed + 1000 * k}), base_model,
                               prompts, model_cfg, dist_ctx, keep_base=k == 0 and base_weight > 0,
                               checkpoints=checkpoints, live=live, step_offset=sum(len(r.plan) for r in runs))
            runs.append(done)
            if done.model is not None and cfg.soup > 1:
                soup.add(done.model)
                if k < cfg.soup - 1:
                    done.model = None  # only the last run's model stays alive: it receives the average
    except BaseException as exc:
        live.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if not dist_ctx.is_main:  # the replicas are identical (or gathered on rank 0): rank 0 saves
        distributed.shutdown(dist_ctx)
        return None
    first, last = runs[0], runs[-1]
    model = last.model
    prompts = PromptsConfig.model_validate(model.prompts)  # the base folder's own prompts fill empty ones
    if cfg.soup > 1:
        soup.load_into(model)
    if first.base_state is not None:
        interpolate_weights(model, first.base_state, base_weight)
    out = Path(out_dir)
    model.save(str(out), create_model_card=False)
    record_trained_dims(out, cfg.matryoshka_dims)  # evaluate, export and serving read them from the model
    steps_per_epoch = len(epoch_batches(examples, cfg.batch_size, cfg.seed, cfg.positives_per_query, 0))
    train_seconds = sum(r.seconds for r in runs)
    trained_rows = sum(len(rows) for r in runs for rows in r.plan[r.start:])  # a continued run: its own steps
    manifest = timer.write_manifest(
        out,
        counts={"examples": len(examples), "augment_rows": sum(ex.augment for ex in examples), "steps": len(first.plan),
                "epochs": math.ceil(len(first.plan) / steps_per_epoch), "runs": len(runs)},
        inputs={"mined": mined_dir},
        config=cfg,
        base_model=base_model,
        model=(model_cfg or ModelConfig()).model_dump(),
        prompts=prompts.model_dump(),
        final_loss=last.losses.history[-1]["loss"],
        loss_history=last.losses.history,
        train_seconds=round(train_seconds, 3),
        examples_per_second=round(trained_rows / max(train_seconds, 1e-9), 3),
        device=str(model.device),
        precision=str(last.amp_dtype).replace("torch.", "") if last.amp_dtype is not None else "fp32",
        base_weight=base_weight,
        processes=dist_ctx.world,
        schedule=choice,
        resumed_from_step=first.start,
    )
    live.log(sum(len(r.plan) for r in runs), {"train/final_loss": manifest.result.final_loss,
                                              "train/seconds": manifest.result.train_seconds,
                                              "train/examples_per_second": manifest.result.examples_per_second})
    live.finish()
    work.discard(checkpoints.folder)  # likewise its checkpoint
    work.discard(choice.journal)  # the model is saved: its probes are in the manifest, never needed again
    distributed.shutdown(dist_ctx)
    return manifest


@dataclass
class _Run:
    """One training run of :func:`_train_once`: the trained model (None on ranks other than 0), its batches, loss
    history, seconds and autocast dtype, and the base weights when WiSE-FT needs them."""

    model: object
    plan: list[list[int]]
    losses: LossLog
    seconds: float
    amp_dtype: object
    base_state: dict | None
    start: int = 0


def _checkpoints(examples: list[TrainExample], known: dict[str, set[str]], cfg: TrainConfig, base_model: str,
                 prompts: PromptsConfig, model_cfg: ModelConfig | None, base_weight: float, dist_ctx: DistContext
                 ) -> Checkpoints:
    """The final run's checkpoints (:mod:`.checkpoint`): in ``run-<hash>`` of the work folder, or off."""
    if cfg.checkpoint_minutes <= 0 or cfg.soup > 1:
        return Checkpoints(None, 0.0, dist_ctx)
    folder = work.folder(cfg, "run", work.identity(examples, known, cfg, base_model, prompts, model_cfg, base_weight,
                                                  dist_ctx.world)) if dist_ctx.is_main else None
    return Checkpoints(distributed.broadcast(folder, dist_ctx), 60.0 * cfg.checkpoint_minutes, dist_ctx)


def _train_once(examples: list[TrainExample], known: dict[str, set[str]], cfg: TrainConfig, base_model: str,
                prompts: PromptsConfig, model_cfg: ModelConfig | None, dist_ctx: DistContext, keep_base: bool,
                checkpoints: Checkpoints | None = None, live: LiveRun | None = None, step_offset: int = 0) -> _Run:
    """Load the base model, train it on ``cfg``'s plan of batches (seeded by ``cfg.seed``) and return it with LoRA
    merged and, under FSDP, gathered on rank 0. ``keep_base``: also snapshot the untrained weights (WiSE-FT).
    ``checkpoints``: continue from the latest one and save new ones as the run goes. ``live``: the step's MLflow run
    the per-step metrics go to (at ``step_offset`` + step)."""
    model, prompts, base_state = prepare_model(base_model, cfg, prompts, model_cfg, dist_ctx, keep_base)
    plan = plan_steps(examples, cfg.batch_size, cfg.epochs, cfg.seed, cfg.positives_per_query)
    stepper = make_stepper(model, cfg, prompts, len(plan), dist_ctx)
    stepper.tokenize([examples[i] for i in distributed.embedded_rows(len(examples), plan, dist_ctx)])
    log.info(
        "train: %d rows, %d steps (%.2f epochs, batch %d, seed %d) on %s%s, precision %s",
        len(examples), len(plan), cfg.epochs, cfg.batch_size, cfg.seed, model.device,
        f" (rank {dist_ctx.rank} of {dist_ctx.world})" if dist_ctx.enabled else "", stepper.amp_dtype or "fp32",
    )
    checkpoints = checkpoints or Checkpoints(None, 0.0, dist_ctx)
    tail, losses = WeightAverage(), LossLog(window=max(1, len(plan) // 10))
    start = checkpoints.restore(stepper, losses, tail)
    restore_eager = compile_encoder(model) if cfg.compile else None
    telemetry = Telemetry(stepper, examples, len(plan), start, cfg.log_every_steps, live or LiveRun(),
                          main=dist_ctx.is_main, offset=step_offset)
    started = time.perf_counter()
    _train(stepper, examples, plan, dist_ctx, known, tail, tail_steps(len(plan), cfg.average_last), losses, start,
           checkpoints, telemetry)
    seconds = time.perf_counter() - started
    model.eval()
    if tail.count:
        tail.load_into(model)
    if restore_eager is not None:
        restore_eager()
    if stepper.sharded:  # every rank takes part in the gather; rank 0 gets the full weights in a plain model
        model = fsdp.full_model(model, dist_ctx, lambda: _fresh_model(base_model, cfg, prompts, model_cfg))
    if dist_ctx.is_main:
        merge_adapters(model)  # LoRA: the saved folder is a plain model
    return _Run(model if dist_ctx.is_main else None, plan, losses, seconds, stepper.amp_dtype, base_state, start)


def _fresh_model(base_model: str, cfg: TrainConfig, prompts: PromptsConfig, model_cfg: ModelConfig | None):
    """The model as built for training before its first step (LoRA adapters included), unsharded."""
    model = load_for_training(base_model, cfg, prompts, model_cfg)
    add_adapters(model, cfg.lora)
    return model


def _train(stepper: Stepper, examples: list[TrainExample], plan: list[list[int]], ctx: DistContext,
           known: dict[str, set[str]], tail: WeightAverage, tail_at: set[int], losses: LossLog, start: int,
           checkpoints: Checkpoints, telemetry: Telemetry) -> None:
    """Run the planned steps after the first ``start`` (``known``: anchor -> texts never its negative), recording
    the loss in ``losses``, adding the weights after each step of ``tail_at`` to ``tail`` (train.average_last),
    letting ``checkpoints`` save the state and ``telemetry`` report as the run goes."""
    from tqdm.auto import tqdm

    stepper.model.train()
    bar = tqdm(plan[start:], desc="train", unit="step", disable=not ctx.is_main, initial=start, total=len(plan))
    for step, rows in enumerate(bar, start=start + 1):
        loss = stepper.step_rows(examples, rows, known)
        telemetry.after_step(step, rows, loss)
        if losses.add(step, loss):
            bar.set_postfix(loss=f"{losses.last:.4f}", lr=f"{max(stepper.scheduler.get_last_lr()):.2e}")
        if step in tail_at:
            tail.add(stepper.model)
        checkpoints.after_step(step, len(plan), stepper, losses, tail)
    losses.flush(len(plan))


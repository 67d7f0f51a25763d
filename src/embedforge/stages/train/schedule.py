"""``train.schedule=auto``: learning rate, temperature and length chosen from the run's own train rows.

One set of constants does not fit a collection of a hundred queries and one of thousands alike: defaults that
gain on one can lose against the base model on the other. With ``auto``, before the real run:

1. **Held-out slice of the train rows.** ``schedule.holdout`` of the train queries (a seeded draw of anchor
   texts, at least ``min_holdout_queries``, else the fixed schedule is kept) are held out; the eval split the gate
   uses is never touched. With ``schedule.folds`` = k > 1 (cross-fitting) the train queries are dealt into k parts
   instead, every probe is trained k times, each time on all parts but one and scored on that one, and the k
   parts' per-query scores are joined: every train query is held out once, so a gain is judged on all of them
   (a small slice of a few hundred queries resolves little). Each held-out query ranks a pool of texts — its own
   rows' positives and negatives, then other rows' texts up to ``max_pool`` — where its rows' positives are
   relevant and its other known positives (lower grades, other chunks of its documents) are left out of the
   ranking. Score: nDCG@10 (pytrec_eval).
2. **Probes.** Each ``(learning-rate factor, temperature factor)`` of ``schedule.candidates`` trains a fresh copy
   of the base model, built as the final run builds it (LoRA adapters, memory options, prompts, seeds:
   :func:`~embedforge.stages.train.setup.prepare_model`), on the kept queries' rows with the run's own warm-up and decay
   (``train.lr_schedule``), and is scored after every whole epoch and at its end (early stopping: the best
   checkpoint, not the last, counts) as the run would save it (adapters merged, WiSE-FT applied).
   All probes together take at most ``schedule.budget`` x the fixed run's optimizer steps (1.5: the probes cost at
   most 1.5 fixed runs, the final run comes on top), split evenly; a probe is at most twice the fixed length.
3. **Choice.** The best (probe, checkpoint) by held-out nDCG@10 gives learning rate, temperature and epochs; a
   probe best at its end that the budget stopped before the fixed length keeps the fixed epochs (it was still
   improving). The fixed schedule stays if no probe beats the base model on the held-out queries, or if the best
   one's gain over the fixed settings' own probe is not resolved: its paired bootstrap interval over the held-out
   queries (``schedule.confidence``, Bonferroni-corrected for the checkpoints compared) must lie above 0. Picking
   the best of many noisy scores on a few dozen queries otherwise picks noise, and can choose a schedule worse
   than the fixed one. The final run trains on all rows.
4. **Augmentation rows** (``augment`` rows: offline pairs of the user's documents, ``sdg.augment``) are never
   held out or scored — the held-out queries are the user's — and every candidate is probed twice, without and
   with them (twice the probes; the budget counts the probes without them). The fixed settings' probe without
   them is the reference, so they enter the final run only on the same evidence as any other change; when the
   fixed schedule is kept they are left out. ``mode=fixed`` trains on every row.

5. **Journal.** Every finished probe is recorded at once (:mod:`embedforge.stages.train.probe_journal`,
   ``train.work_dir``); a rerun of an interrupted step with the same inputs and settings trains only the probes
   not yet recorded (the choice is the same: the same probes, the same scores).

The probes, scores, budget and reason are recorded in the train result (:class:`~embedforge.contracts.
ScheduleChoice`) and the run summary. Checkpoints inside a probe sit mid-way through its decay, so an
early checkpoint slightly understates what a run of that length would reach: the choice leans to longer runs.
Under torchrun (several GPUs, a TrainJob's nodes) every rank takes part in every probe exactly as in the final run
— the same global batch, each rank embedding its share, gradients averaged — so a probe's steps are the final
run's steps at the same scale (their speed is the final run's); each rank scores its identical replica and rank 0's
choice is broadcast, so all ranks train the same final run. With ``train.sharding=fsdp`` every rank scores with the
sharded model (its one FSDP unit gathers the weights at the first forward); only with FSDP *and* WiSE-FT
(``base_weight`` > 0: interpolating sharded weights) the search is skipped and the fixed schedule is used.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import embedforge.stages.train.distributed as distributed
import embedforge.stages.train.probe_journal as probe_journal
import embedforge.stages.train.work as work
from embedforge.config import ModelConfig, PromptsConfig, TrainConfig
from embedforge.contracts import ScheduleChoice, ScheduleTrial, TrainExample
from embedforge.stages.train.batching import epoch_batches, plan_steps
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.positives import rows_by_anchor
from embedforge.stages.train.wise_ft import resolve_base_weight

log = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """The held-out queries, the texts they rank, and per query the relevant and the left-out pool indices."""

    queries: list[str]
    pool: list[str]
    relevant: list[set[int]]
    ignored: list[set[int]]


def fixed(cfg: TrainConfig, reason: str, augment: bool = False) -> ScheduleChoice:
    """The configured schedule, unchanged (``augment``: with the augmentation rows)."""
    return ScheduleChoice(mode=cfg.schedule.mode, learning_rate=cfg.learning_rate, temperature=cfg.temperature,
                          epochs=cfg.epochs, augment=augment, reason=reason)


def user_rows(examples: list[TrainExample]) -> list[TrainExample]:
    """The rows of the user's own pairs: every row but the augmentation rows (``sdg.augment``)."""
    return [ex for ex in examples if not ex.augment]


def rows_for(examples: list[TrainExample], choice: ScheduleChoice) -> list[TrainExample]:
    """The rows the run trains on: all of them, or without the augmentation rows when ``choice`` left them out."""
    return examples if choice.augment else user_rows(examples)


def apply(cfg: TrainConfig, choice: ScheduleChoice) -> TrainConfig:
    """``cfg`` with the chosen learning rate, temperature and epochs."""
    return cfg.model_copy(update={"learning_rate": choice.learning_rate, "temperature": choice.temperature,
                                  "epochs": choice.epochs})


def fold_queries(examples: list[TrainExample], folds: int, seed: int) -> list[tuple[set[str], set[str]]]:
    """(kept, held-out) anchor texts of each of ``folds`` folds: the queries in a seeded order dealt into ``folds``
    parts, each part held out once."""
    anchors = sorted(rows_by_anchor(examples))
    order = np.random.default_rng(seed).permutation(len(anchors)).tolist()
    parts = [{anchors[i] for i in order[f::folds]} for f in range(folds)]
    return [(set(anchors) - part, part) for part in parts]


def split_queries(examples: list[TrainExample], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(kept, held-out) anchor texts: a seeded draw of ``round(fraction x queries)`` queries is held out."""
    anchors = sorted(rows_by_anchor(examples))
    n_out = round(fraction * len(anchors))
    out = set(np.random.default_rng(seed).choice(len(anchors), size=n_out, replace=False).tolist())
    return {a for i, a in enumerate(anchors) if i not in out}, {anchors[i] for i in out}


def held_out_set(examples: list[TrainExample], held: set[str], known: dict[str, set[str]], max_pool: int,
                 seed: int) -> HeldOut:
    """The ranking task of the held-out queries (see the module docstring)."""
    queries = sorted(held)
    own = [t for ex in examples if ex.anchor in held for t in (ex.positive, *ex.negatives)]
    others = sorted({t for ex in examples if ex.anchor not in held for t in (ex.positive, *ex.negatives)} - set(own))
    room = max(0, max_pool - len(set(own)))
    picked = np.random.default_rng(seed).permutation(len(others))[:room]
    pool = list(dict.fromkeys(own)) + [others[i] for i in sorted(picked.tolist())]
    index = {t: i for i, t in enumerate(pool)}
    groups = rows_by_anchor(examples)
    positives = {q: {index[examples[i].positive] for i in groups[q]} for q in queries}
    ignored = [{index[t] for t in known.get(q, ()) if t in index} - positives[q] for q in queries]
    return HeldOut(queries=queries, pool=pool, relevant=[positives[q] for q in queries], ignored=ignored)


def per_query(model, held: HeldOut, batch_size: int = 64, sharded: bool = False) -> list[float]:
    """Each held-out query's nDCG@10 (in ``held.queries`` order) with ``model`` (eval mode; exact cosine).

    ``sharded`` (an FSDP model): embedded with the training-time forward under ``no_grad``
    (:func:`~embedforge.stages.train.step.embed`, the same embeddings) instead of ``model.encode``, whose inference mode
    would leave FSDP's gathered weights as inference tensors the next training step cannot use."""
    from embedforge.retrieval.encode import encode, prompt_for
    from embedforge.retrieval.ranking import per_query_metrics

    model.eval()
    if sharded:
        import torch

        from embedforge.stages.train.step import embed

        with torch.no_grad():
            q, d = (embed(model, texts, prompt_for(model, kind) or None).cpu().numpy()
                    for texts, kind in ((held.queries, "query"), (held.pool, "document")))
    else:
        q, d = encode(model, held.queries, "query", batch_size), encode(model, held.pool, "document", batch_size)
    sims = q @ d.T
    results, qrels = {}, {}
    for i, row in enumerate(sims):
        row[list(held.ignored[i])] = -np.inf
        top = np.argsort(-row, kind="stable")[:10]
        results[str(i)] = {str(j): float(row[j]) for j in top if np.isfinite(row[j])}
        qrels[str(i)] = {str(j): 1 for j in held.relevant[i]}
    scores = per_query_metrics(qrels, results, [10])
    return [scores[str(i)]["ndcg@10"] for i in range(len(held.queries))]


def choose(mined_dir: str | Path, examples: list[TrainExample], known: dict[str, set[str]], cfg: TrainConfig,
           base_model: str, prompts: PromptsConfig, dist: DistContext, model_cfg: ModelConfig | None = None
           ) -> ScheduleChoice:
    """The schedule of this run: ``cfg``'s own (``train.schedule.mode=fixed``, FSDP, too few queries) or the
    winner of the probes (see the module docstring); the same on every rank under torchrun."""
    sc = cfg.schedule
    user = user_rows(examples)
    extra = [ex for ex in examples if ex.augment]  # sdg.augment rows: trained on by some probes, never scored
    without = ", without the augmentation rows" if extra else ""
    if sc.mode == "fixed":
        return fixed(cfg, "train.schedule.mode=fixed", augment=bool(extra))
    base_weight = resolve_base_weight(cfg, mined_dir)  # WiSE-FT: the probes are scored as the run will save
    if dist.enabled and cfg.sharding == "fsdp" and base_weight > 0:
        return fixed(cfg, f"auto schedule is not searched with train.sharding=fsdp and WiSE-FT (train.base_weight > 0: "
                          f"interpolating sharded weights); the fixed one is used{without}")
    splits = fold_queries(user, sc.folds, cfg.seed) if sc.folds > 1 else [split_queries(user, sc.holdout, cfg.seed)]
    held_n = min(len(held) for _, held in splits)
    if held_n < sc.min_holdout_queries or min(len(kept) for kept, _ in splits) < 2:
        return fixed(cfg, f"only {held_n} of {len(rows_by_anchor(user))} train queries would be held out (fewer than "
                          f"schedule.min_holdout_queries={sc.min_holdout_queries}); the fixed schedule is used{without}")
    fits = [[ex for ex in user if ex.anchor in kept] for kept, _ in splits]
    fixed_steps = len(plan_steps(user, cfg.batch_size, cfg.epochs, cfg.seed, cfg.positives_per_query))
    per_epochs = [len(epoch_batches(fit, cfg.batch_size, cfg.seed, cfg.positives_per_query, 0)) for fit in fits]
    probe_epochs = min(sc.budget * fixed_steps / len(sc.candidates) / sum(per_epochs), 2 * cfg.epochs)
    started = time.perf_counter()
    state = (work.identity(examples, known, cfg, base_model, prompts, model_cfg, base_weight, dist.world)
             if dist.is_main else {})  # what the probes depend on: names the journal (rank 0 keeps it)
    with probe_journal.opened(state, cfg, dist) as journal:
        runs = [_probe(fit, extra, known, held_out_set(user, held, known, sc.max_pool, cfg.seed), cfg, base_model,
                       prompts, probe_epochs, base_weight, model_cfg, dist, journal, f"fold{f}")
                for f, (fit, (_, held)) in enumerate(zip(fits, splits))]
    trials, base_scores = join_folds([r[0] for r in runs]), [v for r in runs for v in r[1]]
    choice = _pick(cfg, trials, base_scores, probe_epochs)
    choice = choice.model_copy(update={"heldout_queries": len(base_scores), "fit_queries": len(splits[0][0]),
                                       "fixed_steps": fixed_steps, "probe_steps": sum(t.steps for t in trials),
                                       "probe_seconds": round(time.perf_counter() - started, 1),
                                       "reused_probes": journal.reused, "journal": str(journal.folder or "")})
    if dist.is_main:
        reused = f", {journal.reused} of them reused from {journal.folder}" if journal.reused else ""
        log.info("train schedule: %d probe steps (%.1f x the fixed run's %d%s) in %.0f s; %s", choice.probe_steps,
                 choice.probe_steps / max(fixed_steps, 1), fixed_steps, reused, choice.probe_seconds, choice.reason)
    return distributed.broadcast(choice, dist)  # rank 0's choice: every rank must train the same run


def join_folds(folds: list[list[ScheduleTrial]]) -> list[ScheduleTrial]:
    """One trial per candidate from its trial in every fold: the n-th checkpoints of the folds joined (their
    per-query scores concatenated, as many checkpoints as the shortest fold has, named as in the first fold), steps
    summed."""
    joined = []
    for trials in zip(*folds):
        n = min(len(t.per_query) for t in trials)
        checkpoints = [list(t.per_query.values())[:n] for t in trials]  # per fold, its first n checkpoints' scores
        per_query = {key: [v for fold in checkpoints for v in fold[i]]
                     for i, key in enumerate(list(trials[0].per_query)[:n])}
        joined.append(trials[0].model_copy(update={
            "steps": sum(t.steps for t in trials), "per_query": per_query,
            "scores": {k: round(float(np.mean(v)), 6) for k, v in per_query.items()}}))
    return joined


def _probe(fit: list[TrainExample], extra: list[TrainExample], known: dict[str, set[str]], held: HeldOut,
           cfg: TrainConfig, base_model: str, prompts: PromptsConfig, epochs: float, base_weight: float,
           model_cfg: ModelConfig | None = None, dist: DistContext = DistContext(),
           journal: probe_journal.Journal | None = None, fold: str = "fold0"
           ) -> tuple[list[ScheduleTrial], list[float]]:
    """Train every candidate from the base weights on ``fit`` for ``epochs``, scoring ``held`` at each checkpoint;
    with augmentation rows (``extra``), every candidate again on ``fit`` + ``extra``. Returns the trials and the
    base model's per-query scores (``base_weight``: WiSE-FT's, applied before scoring). A probe ``journal`` holds
    from an earlier attempt is taken from it; every probe trained is added to it."""
    runs = [(a, c) for a in ([False, True] if extra else [False]) for c in cfg.schedule.candidates]
    trials, base_scores = [], []
    journal = journal or probe_journal.Journal()
    if dist.is_main:
        log.info("train schedule: probing %d settings for %.2f epochs each on %d held-out queries", len(runs), epochs,
                 len(held.queries))
    for augment, (lr_factor, t_factor) in runs:
        probe_cfg = cfg.model_copy(update={"learning_rate": cfg.learning_rate * lr_factor,
                                           "temperature": min(1.0, cfg.temperature * t_factor), "epochs": epochs})
        unit = f"{fold}/{'augment' if augment else 'user'}/lr{lr_factor:g}/t{t_factor:g}/epochs{epochs:.6g}"
        done = journal.get(unit)
        if done is None:
            trial, base = _train_probe(fit + extra if augment else fit, known, held, probe_cfg, base_model, prompts,
                                       model_cfg, dist, base_weight, score_base=not base_scores)
            journal.put(unit, trial, base)
        else:
            trial, base = done
        base_scores = base_scores or base
        trials.append(trial.model_copy(update={"augment": augment}))
        if dist.is_main:
            log.info("train schedule: lr %.2e, T %.3f%s -> %s%s", trial.learning_rate, trial.temperature,
                     " with the augmentation rows" if augment else "", trial.scores,
                     " (recorded by an earlier attempt)" if done is not None else "")
    return trials, base_scores


def _train_probe(rows: list[TrainExample], known: dict[str, set[str]], held: HeldOut, cfg: TrainConfig,
                 base_model: str, prompts: PromptsConfig, model_cfg: ModelConfig | None, dist: DistContext,
                 base_weight: float, score_base: bool) -> tuple[ScheduleTrial, list[float]]:
    """One probe: the model built as the final run builds it (:func:`~embedforge.stages.train.setup.prepare_model`: LoRA,
    memory options, seeds), trained on ``rows`` with ``cfg``'s settings — under torchrun by every rank, each
    embedding its share of the batch as in the final run — and scored on ``held`` after every whole epoch and at its
    end (every rank scores its identical replica). With ``score_base`` also the untrained model's scores."""
    from embedforge.stages.train.setup import make_stepper, prepare_model

    model, prompts, base = prepare_model(base_model, cfg, prompts, model_cfg, dist, keep_base=base_weight > 0)
    plan = plan_steps(rows, cfg.batch_size, cfg.epochs, cfg.seed, cfg.positives_per_query)
    per_epoch = len(epoch_batches(rows, cfg.batch_size, cfg.seed, cfg.positives_per_query, 0))
    stepper = make_stepper(model, cfg, prompts, len(plan), dist)

    def score() -> list[float]:
        value = _score_as_saved(model, held, base, base_weight, stepper.sharded)
        if stepper.sharded:  # drop the weights the scoring gathered: training gathers its own at its next forward
            model.reshard()
        return value

    base_scores = score() if score_base else []
    if base_scores and dist.is_main:
        log.info("train schedule: base model nDCG@10 %.4f on the held-out queries", float(np.mean(base_scores)))
    stepper.tokenize([rows[i] for i in distributed.embedded_rows(len(rows), plan, dist)])
    checkpoints = {min(len(plan), e * per_epoch) for e in range(1, math.ceil(len(plan) / per_epoch) + 1)}
    queries: dict[str, list[float]] = {}
    model.train()
    for step, batch_rows in enumerate(plan, start=1):
        stepper.step_rows(rows, batch_rows, known)
        if step in checkpoints:
            queries[f"{step / per_epoch:.3g}"] = score()
            model.train()
    scores = {k: round(float(np.mean(v)), 6) for k, v in queries.items()}
    return ScheduleTrial(learning_rate=cfg.learning_rate, temperature=cfg.temperature, steps=len(plan), scores=scores,
                         per_query=queries), base_scores


def _score_as_saved(model, held: HeldOut, base: dict | None, base_weight: float, sharded: bool = False
                    ) -> list[float]:
    """:func:`per_query` of the weights the run would save: LoRA adapters merged, WiSE-FT interpolated when
    ``base_weight`` > 0 (``model`` itself is left as it was; never with ``sharded`` FSDP weights, see
    :func:`choose`)."""
    if base_weight <= 0:
        return per_query(model, held, sharded=sharded)
    import copy

    from embedforge.stages.train.lora import has_adapters, merge_adapters
    from embedforge.stages.train.wise_ft import interpolate_weights, snapshot_weights

    if has_adapters(model):  # the interpolation is over the merged weights, as the saved model's
        merged = copy.deepcopy(model)
        merge_adapters(merged)
        interpolate_weights(merged, base, base_weight)
        return per_query(merged, held)
    trained = snapshot_weights(model)
    interpolate_weights(model, base, base_weight)
    value = per_query(model, held)
    interpolate_weights(model, trained, 1.0)
    return value


def _pick(cfg: TrainConfig, trials: list[ScheduleTrial], base: list[float], probe_epochs: float) -> ScheduleChoice:
    """The best (trial, checkpoint) by mean held-out nDCG@10 (ties: the earlier candidate, the shorter run) if it
    beats the base model (``base``: its per-query scores) and, with ``schedule.confidence`` > 0, beats the fixed
    settings' own probe (nearest checkpoint to ``train.epochs``; the base model where they were not probed) with a
    paired bootstrap interval over the held-out queries above 0. The best of several noisy probes scored on a
    few dozen queries is often no better than the fixed settings (the winner's curse): without that evidence the
    fixed schedule stays."""
    from embedforge.retrieval.stats import paired_bootstrap

    best, best_i, best_key, best_score, at_end = None, -1, "0", -1.0, False
    for i, trial in enumerate(trials):
        for n, (key, value) in enumerate(trial.scores.items(), start=1):
            if value > best_score:
                best, best_i, best_key, best_score, at_end = trial, i, key, value, n == len(trial.scores)
    best_epochs, base_score = float(best_key), float(np.mean(base))
    common = {"base_score": round(base_score, 4), "trials": trials}
    if best is None or best_score <= base_score:
        return fixed(cfg, f"no probe beat the base model on the held-out queries (best {best_score:.4f} vs "
                          f"{base_score:.4f}); the fixed schedule is used").model_copy(update=common)
    why = (f"best held-out nDCG@10 {best_score:.4f} (base {base_score:.4f}) after {best_epochs:g} epochs"
           + (" with the augmentation rows" if best.augment else ""))
    confidence = cfg.schedule.confidence
    ref_name, ref_scores, ref_key = _reference(cfg, trials, base)
    if confidence > 0 and ref_key == (best_i, best_key):
        return fixed(cfg, why + ": the fixed settings' own probe").model_copy(update=common)
    if confidence > 0:
        compared = sum(len(t.scores) for t in trials) - (ref_key is not None)
        gain = paired_bootstrap(ref_scores, best.per_query[best_key], n_resamples=4000,
                                confidence=1 - (1 - confidence) / max(compared, 1), seed=cfg.seed)
        why += (f"; gain over {ref_name} {gain.mean:+.4f}, interval [{gain.low:+.4f}, {gain.high:+.4f}] over "
                f"{len(base)} held-out queries")
        if gain.low <= 0:
            return fixed(cfg, why + ": no evidence of a better schedule, the fixed one is used").model_copy(update=common)
    epochs = best_epochs
    if at_end and probe_epochs < cfg.epochs:
        epochs, why = cfg.epochs, why + f", still improving when the budget stopped the probe: the fixed {cfg.epochs:g} epochs"
    return ScheduleChoice(mode="auto", learning_rate=best.learning_rate, temperature=best.temperature,
                          epochs=round(epochs, 3), augment=best.augment, reason=why, **common)


def _reference(cfg: TrainConfig, trials: list[ScheduleTrial], base: list[float]
               ) -> tuple[str, list[float], tuple[int, str] | None]:
    """What a probe must beat: the probe of the fixed learning rate and temperature, without augmentation rows, at
    its checkpoint nearest ``cfg.epochs`` — (name, per-query scores, (trial index, checkpoint key)) — or the base model when no probe used
    them."""
    for i, trial in enumerate(trials):
        if (not trial.augment and math.isclose(trial.learning_rate, cfg.learning_rate)
                and math.isclose(trial.temperature, cfg.temperature)):
            key = min(trial.per_query, key=lambda k: abs(float(k) - cfg.epochs))
            return f"the fixed settings' probe ({key} epochs)", trial.per_query[key], (i, key)
    return "the base model", base, None

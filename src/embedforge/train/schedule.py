"""``train.schedule=auto``: learning rate, temperature and length chosen from the run's own train rows.

One set of constants does not fit a 150-query and a 2,600-query collection alike (issue #13: the defaults gained
on one, lost against the base model on the other). With ``auto``, before the real run:

1. **Held-out slice of the train rows.** ``schedule.holdout`` of the train queries (a seeded draw of anchor
   texts, at least ``min_holdout_queries``, else the fixed schedule is kept) are held out; the eval split the gate
   uses is never touched. Each held-out query ranks a pool of texts — its own rows' positives and negatives, then
   other rows' texts up to ``max_pool`` — where its rows' positives are relevant and its other known positives
   (lower grades, other chunks of its documents) are left out of the ranking. Score: nDCG@10 (pytrec_eval).
2. **Probes.** Each ``(learning-rate factor, temperature factor)`` of ``schedule.candidates`` trains a fresh copy
   of the base model on the kept queries' rows with the run's own warm-up and decay (``train.lr_schedule``), and
   is scored after every whole epoch and at its end (early stopping: the best checkpoint, not the last, counts).
   All probes together take at most ``schedule.budget`` x the fixed run's optimizer steps (1.5: the probes cost at
   most 1.5 fixed runs, the final run comes on top), split evenly; a probe is at most twice the fixed length.
3. **Choice.** The best (probe, checkpoint) by held-out nDCG@10 gives learning rate, temperature and epochs; a
   probe best at its end that the budget stopped before the fixed length keeps the fixed epochs (it was still
   improving). If no probe beats the base model on the held-out queries the fixed schedule stays (no evidence
   for anything else; the gate refuses a worse model anyway). The final run trains on all rows.

The probes, scores, budget and reason are recorded in the train result (:class:`~embedforge.contracts.
ScheduleChoice`) and the run summary. Checkpoints inside a probe sit mid-way through its decay, so an
early checkpoint slightly understates what a run of that length would reach: the choice leans to longer runs.
Under torchrun the search is skipped (one process cannot probe for all ranks): the fixed schedule is used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedforge.config import ModelConfig, PromptsConfig, TrainConfig
from embedforge.contracts import ScheduleChoice, ScheduleTrial, TrainExample
from embedforge.train.batching import collate, epoch_batches, plan_steps
from embedforge.train.distributed import DistContext
from embedforge.train.positives import rows_by_anchor

log = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """The held-out queries, the texts they rank, and per query the relevant and the left-out pool indices."""

    queries: list[str]
    pool: list[str]
    relevant: list[set[int]]
    ignored: list[set[int]]


def fixed(cfg: TrainConfig, reason: str) -> ScheduleChoice:
    """The configured schedule, unchanged."""
    return ScheduleChoice(mode=cfg.schedule.mode, learning_rate=cfg.learning_rate, temperature=cfg.temperature,
                          epochs=cfg.epochs, reason=reason)


def apply(cfg: TrainConfig, choice: ScheduleChoice) -> TrainConfig:
    """``cfg`` with the chosen learning rate, temperature and epochs."""
    return cfg.model_copy(update={"learning_rate": choice.learning_rate, "temperature": choice.temperature,
                                  "epochs": choice.epochs})


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


def score(model, held: HeldOut, batch_size: int = 64) -> float:
    """Held-out nDCG@10 of ``model`` (eval mode; exact cosine over the pool)."""
    from embedforge.encode import encode
    from embedforge.retrieval import retrieval_metrics

    model.eval()
    sims = encode(model, held.queries, "query", batch_size) @ encode(model, held.pool, "document", batch_size).T
    results, qrels = {}, {}
    for i, row in enumerate(sims):
        row[list(held.ignored[i])] = -np.inf
        top = np.argsort(-row, kind="stable")[:10]
        results[str(i)] = {str(j): float(row[j]) for j in top if np.isfinite(row[j])}
        qrels[str(i)] = {str(j): 1 for j in held.relevant[i]}
    return retrieval_metrics(qrels, results, [10])["ndcg@10"]


def choose(mined_dir: str | Path, examples: list[TrainExample], known: dict[str, set[str]], cfg: TrainConfig,
           base_model: str, prompts: PromptsConfig, dist: DistContext, model_cfg: ModelConfig | None = None
           ) -> ScheduleChoice:
    """The schedule of this run: ``cfg``'s own (``train.schedule.mode=fixed``, torchrun, too few queries) or the
    winner of the probes (see the module docstring)."""
    sc = cfg.schedule
    if sc.mode == "fixed":
        return fixed(cfg, "train.schedule.mode=fixed")
    if dist.enabled:
        return fixed(cfg, "auto schedule is not searched under torchrun; the fixed one is used")
    kept, held = split_queries(examples, sc.holdout, cfg.seed)
    if len(held) < sc.min_holdout_queries or len(kept) < 2:
        return fixed(cfg, f"only {len(held)} of {len(kept) + len(held)} train queries would be held out (fewer "
                          f"than schedule.min_holdout_queries={sc.min_holdout_queries}); the fixed schedule is used")
    fit = [ex for ex in examples if ex.anchor in kept]
    fixed_steps = len(plan_steps(examples, cfg.batch_size, cfg.epochs, cfg.seed, cfg.positives_per_query))
    per_epoch = len(epoch_batches(fit, cfg.batch_size, cfg.seed, cfg.positives_per_query, 0))
    probe_epochs = min(sc.budget * fixed_steps / len(sc.candidates) / per_epoch, 2 * cfg.epochs)
    held_set = held_out_set(examples, held, known, sc.max_pool, cfg.seed)
    trials, base_score = _probe(mined_dir, fit, known, held_set, cfg, base_model, prompts, probe_epochs, per_epoch,
                                model_cfg)
    choice = _pick(cfg, trials, base_score, probe_epochs)
    return choice.model_copy(update={"heldout_queries": len(held), "fit_queries": len(kept), "fixed_steps": fixed_steps,
                                     "probe_steps": sum(t.steps for t in trials)})


def _probe(mined_dir, fit: list[TrainExample], known: dict[str, set[str]], held: HeldOut, cfg: TrainConfig,
           base_model: str, prompts: PromptsConfig, epochs: float, per_epoch: int,
           model_cfg: ModelConfig | None = None) -> tuple[list[ScheduleTrial], float]:
    """Train every candidate from the base weights on ``fit`` for ``epochs``, scoring ``held`` at each checkpoint."""
    from embedforge.train.setup import load_for_training, make_stepper, seed_everything
    from embedforge.train.wise_ft import interpolate_weights, resolve_base_weight, snapshot_weights

    seed_everything(cfg.seed)
    model = load_for_training(base_model, cfg, prompts, model_cfg)
    base = snapshot_weights(model)
    base_weight = resolve_base_weight(cfg, mined_dir)
    base_score = score(model, held)
    log.info("train schedule: %d held-out queries, base nDCG@10 %.4f; probing %d settings for %.2f epochs each",
             len(held.queries), base_score, len(cfg.schedule.candidates), epochs)
    trials = []
    for lr_factor, t_factor in cfg.schedule.candidates:
        interpolate_weights(model, base, 1.0)  # back to the base weights
        seed_everything(cfg.seed)
        probe_cfg = cfg.model_copy(update={"learning_rate": cfg.learning_rate * lr_factor,
                                           "temperature": min(1.0, cfg.temperature * t_factor), "epochs": epochs})
        plan = plan_steps(fit, cfg.batch_size, epochs, cfg.seed, cfg.positives_per_query)
        stepper = make_stepper(model, probe_cfg, prompts, len(plan), DistContext())
        stepper.tokenize(fit)
        checkpoints = {min(len(plan), e * per_epoch) for e in range(1, math.ceil(len(plan) / per_epoch) + 1)}
        scores: dict[str, float] = {}
        model.train()
        for step, rows in enumerate(plan, start=1):
            stepper.step(collate(fit, rows, known))
            if step in checkpoints:
                scores[f"{step / per_epoch:.3g}"] = _score_as_saved(model, held, base, base_weight)
                model.train()
        trials.append(ScheduleTrial(learning_rate=probe_cfg.learning_rate, temperature=probe_cfg.temperature,
                                    steps=len(plan), scores=scores))
        log.info("train schedule: lr %.2e, T %.3f -> %s", probe_cfg.learning_rate, probe_cfg.temperature, scores)
    return trials, base_score


def _score_as_saved(model, held: HeldOut, base: dict, base_weight: float) -> float:
    """:func:`score` of the weights the run would save (WiSE-FT interpolated when ``base_weight`` > 0)."""
    if base_weight <= 0:
        return score(model, held)
    from embedforge.train.wise_ft import interpolate_weights, snapshot_weights

    trained = snapshot_weights(model)
    interpolate_weights(model, base, base_weight)
    value = score(model, held)
    interpolate_weights(model, trained, 1.0)
    return value


def _pick(cfg: TrainConfig, trials: list[ScheduleTrial], base_score: float, probe_epochs: float) -> ScheduleChoice:
    """The best (trial, checkpoint); ties go to the earlier candidate and the shorter run."""
    best, best_epochs, best_score, at_end = None, 0.0, -1.0, False
    for trial in trials:
        for n, (epochs, value) in enumerate(trial.scores.items(), start=1):
            if value > best_score:
                best, best_epochs, best_score, at_end = trial, float(epochs), value, n == len(trial.scores)
    common = {"base_score": round(base_score, 4), "trials": trials}
    if best is None or best_score <= base_score:
        return fixed(cfg, f"no probe beat the base model on the held-out queries (best {best_score:.4f} vs "
                          f"{base_score:.4f}); the fixed schedule is used").model_copy(update=common)
    epochs, why = best_epochs, f"best held-out nDCG@10 {best_score:.4f} (base {base_score:.4f}) after {best_epochs:g} epochs"
    if at_end and probe_epochs < cfg.epochs:
        epochs, why = cfg.epochs, why + f", still improving when the budget stopped the probe: the fixed {cfg.epochs:g} epochs"
    return ScheduleChoice(mode="auto", learning_rate=best.learning_rate, temperature=best.temperature,
                          epochs=round(epochs, 3), reason=why, **common)

"""Gate: promote the fine-tuned model only if it beats the base model by a margin AND holds up against the champion.

:func:`decide` is a pure function over metric dicts and per-query score arrays, so the rule is tested without
MLflow. :func:`run` gathers its inputs: the fine-tuned and base metrics from ``evaluation.json`` and each eval
query's scores from evaluate's per-query records; the champion (the version the registered model's ``cfg.alias``
points at, if any, and not the challenger itself) is downloaded from MLflow and re-evaluated on THE SAME eval set
(the ``chunks`` + ``pairs`` artifacts) with the rankings and metrics evaluate uses
(:func:`embedforge.retrieval.ranking.rank_queries`, :func:`~embedforge.retrieval.ranking.score_rankings`), overall
and per query, so challenger and champion are compared on equal terms, query by query, even when the champion was trained
and evaluated on other data. When evaluate computed its numbers on another device kind than the gate's
(``evaluation.json``'s ``device``: a GPU evaluate pod, a CPU gate), the challenger is downloaded and re-evaluated
here too, so the champion comparison never mixes devices and rounding cannot decide a tie. It encodes as
evaluate does (``eval_cfg.encode``: on a CPU ONNX Runtime, with the run's graph and embedding cache, so a
champion whose embeddings of these texts an earlier run computed is not encoded again).

Rules (``g`` = gain in the metric's good direction, i.e. ``value - other`` or ``other - value`` when
``greater_is_better`` is False):

* ``interval`` (default): ``g`` per query, paired by query; a percentile bootstrap over the queries
  (:func:`embedforge.retrieval.stats.paired_bootstrap`, ``cfg.bootstrap_resamples``, seeded) gives the interval
  of the mean gain at ``cfg.confidence``. Promote when the interval of ``g(challenger, base)`` has its lower bound
  ``> 0`` and ``>= cfg.min_improvement``, and there is no champion or the lower bound of ``g(challenger,
  champion)`` is ``>= -cfg.non_inferiority_margin`` (non-inferiority: the challenger may be slightly worse than
  the champion, never demonstrably worse). Fewer than two paired queries give no interval: not promoted.
* ``point``: on the means of ``evaluation.json``: ``g(challenger, base) > 0`` and ``>= cfg.min_improvement``, and
  no champion or ``g(challenger, champion) > 0``. Also what decides, with the reason saying so, when the per-query
  scores are missing (an evaluation written before they were).

The numbers compared are those of the held-out split, or — ``cfg.eval_set`` ``auto`` (default) with an
``--eval-beir`` collection, or ``external`` — those of the external, human-judged collection, on which the
champion is then re-evaluated too.

The decision is also recorded in MLflow: ``gate.*`` tags on the challenger's model version and ``gate.*`` metrics
on the run that registered it (:func:`mlflow_record`).

Example:
    >>> from embedforge.config import GateConfig
    >>> d = decide({"ndcg@10": 0.61}, {"ndcg@10": 0.55}, None, GateConfig(min_improvement=0.01, rule="point"))
    >>> d.promote, round(d.margin, 2)
    (True, 0.06)
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.config import EvaluateConfig, GateConfig
from embedforge.contracts import (
    DECISION_FILE,
    Decision,
    EvaluationResult,
    GainInterval,
    Manifest,
    RegistryRecord,
    StageTimer,
    read_chunks,
    read_pairs,
    read_per_query,
    read_result,
    write_json,
)
from embedforge.errors import InputError
from embedforge.registry.aliases import current_champion, download_version

if TYPE_CHECKING:
    from embedforge.retrieval.ranking import Scores

log = logging.getLogger(__name__)

#: Gains within this distance of a threshold count as meeting it (float noise, e.g. 0.6 - 0.5 vs 0.1).
EPS = 1e-9
#: The fewest paired queries an interval is computed from.
MIN_QUERIES = 2


def _value(metrics: dict[str, Any], metric: str, who: str) -> float:
    if not isinstance(metrics, dict) or metric not in metrics:
        have = ", ".join(sorted(metrics)) if isinstance(metrics, dict) else type(metrics).__name__
        raise InputError(f"{who} metrics have no {metric!r} (have: {have}); set gate.metric to an evaluated metric")
    v = metrics[metric]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{who} {metric} is {v!r}, not a finite number")
    return float(v)


def _gain(value: float, other: float, greater_is_better: bool) -> float:
    return value - other if greater_is_better else other - value


# ----------------------------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class Evidence:
    """Each eval query's value of the gate's metric under each model, paired by query: what the interval rule
    decides on.

    Attributes:
        base: The base model's values.
        challenger: The challenger's values on the same queries, in the same order (evaluate's, computed next to
            the base model's).
        champion: The champion's values (re-evaluated by the gate), or None when there is no champion.
        challenger_vs_champion: The challenger's values on the champion's queries, in the champion's order (its
            re-evaluation next to the champion's when evaluate ran on another device kind); None: ``challenger``.
    """

    base: Sequence[float]
    challenger: Sequence[float]
    champion: Sequence[float] | None = None
    challenger_vs_champion: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if len(self.base) != len(self.challenger):
            raise ValueError(f"{len(self.base)} base vs {len(self.challenger)} challenger scores: not paired")
        if self.champion is not None and len(self.champion) != len(self.vs_champion()):
            raise ValueError(f"{len(self.champion)} champion vs {len(self.vs_champion())} challenger scores: "
                             "not paired")

    def vs_champion(self) -> Sequence[float]:
        """The challenger's values paired with ``champion``."""
        return self.challenger if self.challenger_vs_champion is None else self.challenger_vs_champion


def gain_interval(other: Sequence[float], value: Sequence[float], cfg: GateConfig) -> GainInterval | None:
    """The paired bootstrap interval of the mean per-query gain of ``value`` over ``other`` (in ``cfg.metric``'s
    good direction, at ``cfg.confidence``), or None for fewer than :data:`MIN_QUERIES` queries."""
    from embedforge.retrieval.stats import paired_bootstrap

    if len(value) < MIN_QUERIES:
        return None
    first, second = (other, value) if cfg.greater_is_better else (value, other)
    iv = paired_bootstrap(first, second, n_resamples=cfg.bootstrap_resamples, confidence=cfg.confidence)
    return GainInterval(mean=iv.mean, low=iv.low, high=iv.high, n=len(value))


def _pct(confidence: float) -> str:
    return f"{round(confidence * 100, 6):g} %"


def _span(iv: GainInterval, confidence: float) -> str:
    return f"{_pct(confidence)} interval [{iv.low:+.4f}, {iv.high:+.4f}] over {iv.n} eval queries"


def _too_few(n: int, what: str, confidence: float) -> str:
    queries = "query is" if n == 1 else "queries are"
    return (f"{n} paired eval {queries} too few for a {_pct(confidence)} interval of the gain over {what} (the "
            f"interval rule needs at least {MIN_QUERIES}; gate.rule=point decides on the means)")


# ----------------------------------------------------------------------------------------------- decide
def decide(
    finetuned: dict[str, Any],
    base: dict[str, Any],
    champion: dict[str, Any] | None,
    cfg: GateConfig,
    champion_version: str | None = None,
    challenger_version: str | None = None,
    challenger_rerun: dict[str, Any] | None = None,
    evidence: Evidence | None = None,
    no_evidence: str = "",
) -> Decision:
    """Decide whether the fine-tuned (challenger) model should be promoted.

    Args:
        finetuned: Metrics of the fine-tuned model, e.g. ``{"ndcg@10": 0.61, ...}``.
        base: Metrics of the base model on the same eval set.
        champion: Metrics of the current champion on the same eval set, or None when there is none.
        cfg: Rule, metric, ``min_improvement``, ``greater_is_better``, confidence, non-inferiority margin, alias.
        champion_version: Registry version of the champion (for the record and the reason).
        challenger_version: Registry version of the challenger (for the record).
        challenger_rerun: The challenger's metrics computed next to the champion's (same process, same device
            kind) when ``finetuned`` came from another device kind; the champion comparison uses them, the base
            comparison keeps ``finetuned`` (computed next to ``base``).
        evidence: The per-query values of ``cfg.metric`` (its ``champion`` set when ``champion`` is); the
            intervals are computed from them under either rule. None: the point rule decides.
        no_evidence: Why ``evidence`` is None, for the reason (e.g. the per-query file evaluate did not write);
            empty: "no per-query scores".

    Returns:
        A :class:`Decision` with the rule that decided, the intervals and a reason sentence quoting them.

    Raises:
        InputError: The metric is missing or not a finite number in one of the dicts.
    """
    m, gib = cfg.metric, cfg.greater_is_better
    c = _value(finetuned, m, "fine-tuned")
    b = _value(base, m, "base")
    ch = _value(champion, m, f"champion v{champion_version}" if champion_version else "champion") if champion is not None else None
    c_vs_ch = _value(challenger_rerun, m, "fine-tuned (re-evaluated)") if challenger_rerun is not None else c
    margin = _gain(c, b, gib)
    ch_margin = _gain(c_vs_ch, ch, gib) if ch is not None else None
    ch_name = f"champion v{champion_version}" if champion_version else "the champion"

    if evidence is not None and ch is not None and evidence.champion is None:
        evidence, no_evidence = None, f"no per-query scores of {ch_name}"
    vs_base = vs_champion = None
    if evidence is not None:
        vs_base = gain_interval(evidence.base, evidence.challenger, cfg)
        if evidence.champion is not None:
            vs_champion = gain_interval(evidence.champion, evidence.vs_champion(), cfg)
    rule, fallback = cfg.rule, ""
    if rule == "interval" and evidence is None:
        rule, fallback = "point", f"{no_evidence or 'no per-query scores'}: decided by the point rule"

    if rule == "point" or evidence is None:  # (no evidence: rule is "point" already)
        promote, reason = _point_rule(c, b, ch, margin, ch_margin, c_vs_ch, ch_name, cfg, challenger_rerun is not None)
        for what, iv in (("base", vs_base), (ch_name, vs_champion)):
            if iv is not None:
                reason += f"; the gain over {what} has a {_span(iv, cfg.confidence)}"
        if fallback:
            reason += f" ({fallback})"
    else:
        n_champion = len(evidence.champion) if evidence.champion is not None else 0
        promote, reason = _interval_rule(vs_base, vs_champion, len(evidence.challenger), n_champion, ch is not None,
                                         ch_name, cfg)
        if challenger_rerun is not None and ch is not None:
            reason += f" (challenger and {ch_name} both re-evaluated here)"
    return Decision(
        promote=promote,
        reason=reason,
        metric=m,
        greater_is_better=gib,
        challenger=c,
        base_value=b,
        champion_value=ch,
        margin=margin,
        champion_margin=ch_margin,
        min_improvement=cfg.min_improvement,
        champion_version=champion_version if ch is not None else None,
        challenger_version=challenger_version,
        alias=cfg.alias,
        rule=rule,
        fallback=fallback,
        confidence=cfg.confidence,
        non_inferiority_margin=cfg.non_inferiority_margin,
        vs_base=vs_base,
        vs_champion=vs_champion,
    )


def _point_rule(c: float, b: float, ch: float | None, margin: float, ch_margin: float | None, c_vs_ch: float,
                ch_name: str, cfg: GateConfig, rerun: bool) -> tuple[bool, str]:
    """The point rule on the means: (promote, reason)."""
    m = cfg.metric
    direction = "" if cfg.greater_is_better else " (lower is better)"
    beats_base = margin > EPS and margin >= cfg.min_improvement - EPS
    beats_champion = ch_margin is None or ch_margin > EPS
    head = f"fine-tuned {m}{direction} {c:.4f}"
    if not beats_base:
        if margin <= EPS:
            reason = f"not promoted: {head} does not beat base {b:.4f} (gain {margin:+.4f})"
        else:
            reason = (f"not promoted: {head} beats base {b:.4f} by only {margin:+.4f}, "
                      f"less than the required {cfg.min_improvement:.4f}")
        if ch is not None:
            reason += f"; {ch_name} has {ch:.4f}"
    elif not beats_champion:
        reason = (f"not promoted: {head} beats base {b:.4f} by {margin:+.4f} but does not beat "
                  f"{ch_name} {ch:.4f} (gain {ch_margin:+.4f})")
        if rerun:
            reason += f"; both re-evaluated here, fine-tuned {c_vs_ch:.4f}"
    else:
        reason = f"promoted: {head} beats base {b:.4f} by {margin:+.4f} (required {cfg.min_improvement:.4f})"
        reason += (f" and {ch_name} {ch:.4f} by {ch_margin:+.4f}" if ch is not None
                   else " and there is no champion yet")
        if rerun and ch is not None:
            reason += f" (both re-evaluated here, fine-tuned {c_vs_ch:.4f})"
    return beats_base and beats_champion, reason


def _interval_rule(vs_base: GainInterval | None, vs_champion: GainInterval | None, n_base: int, n_champion: int,
                   has_champion: bool, ch_name: str, cfg: GateConfig) -> tuple[bool, str]:
    """The interval rule on the paired intervals: (promote, reason)."""
    m = cfg.metric + ("" if cfg.greater_is_better else " (lower is better)")
    if vs_base is None:
        return False, f"not promoted: {_too_few(n_base, 'base', cfg.confidence)}"
    need = max(cfg.min_improvement, 0.0)
    required = "0" if need <= EPS else f"the required {need:+.4f}"
    head = f"gain over base {vs_base.mean:+.4f} {m}, {_span(vs_base, cfg.confidence)}"
    against = (f"gain over {ch_name} {vs_champion.mean:+.4f}, {_span(vs_champion, cfg.confidence)}"
               if vs_champion is not None else "")
    if not (vs_base.low > EPS and vs_base.low >= need - EPS):
        if vs_base.high <= EPS:
            why = "is not above 0"
        elif vs_base.low <= EPS:
            why = "includes 0"
        else:
            why = f"has its lower bound below {required}"
        return False, f"not promoted: {head} {why}" + (f"; {against}" if against else "")
    head += f" lies above {required}"
    if not has_champion:
        return True, f"promoted: {head}; there is no champion yet"
    if vs_champion is None:
        return False, f"not promoted: {head}, but {_too_few(n_champion, ch_name, cfg.confidence)}"
    floor = 0.0 - cfg.non_inferiority_margin  # 0.0 - 0.0 is +0.0 (a bare minus would print -0.0000)
    if vs_champion.low < floor - EPS:
        return False, (f"not promoted: {head}, but {against} falls below {floor:+.4f} (non-inferiority margin "
                       f"{cfg.non_inferiority_margin:.4f})")
    return True, (f"promoted: {head}, and {against} stays at or above {floor:+.4f} (non-inferiority margin "
                  f"{cfg.non_inferiority_margin:.4f})")


# -------------------------------------------------------------------------------------------- champion
def evaluate_champion(model_dir: str | Path, chunks_dir: str | Path, pairs_dir: str | Path,
                      eval_cfg: EvaluateConfig, external: str | Path | None = None) -> "Scores":
    """Metrics of the model in ``model_dir``, overall and per query, on the eval split of ``chunks_dir`` +
    ``pairs_dir``, or on the external BEIR folder ``external`` when given.

    Computed exactly as the evaluate stage computes the fine-tuned model's numbers (same rankings, same corpus,
    same queries) and rounded like ``evaluation.json`` and ``per_query.jsonl`` (5 decimals), so equal models
    compare equal.
    """
    from embedforge.retrieval.beir import rank_beir_folder
    from embedforge.retrieval.encode import load_model
    from embedforge.retrieval.ranking import (
        Scores,
        rank_queries,
        round_metrics,
        score_rankings,
    )

    model = load_model(str(model_dir))  # as evaluate loads the fine-tuned model (and keyed for its ONNX graph)
    if external is not None:
        coll, results = rank_beir_folder(model, external, eval_cfg)
        qrels = coll.qrels
    else:
        eval_set, results = rank_queries(model, read_chunks(chunks_dir), read_pairs(pairs_dir), eval_cfg)
        qrels = eval_set.qrels
    scores = score_rankings(qrels, results, eval_cfg.all_k)
    return Scores(metrics=round_metrics(scores.metrics),
                  per_query={q: round_metrics(v) for q, v in scores.per_query.items()})


def pick_eval_set(evaluation: EvaluationResult, cfg: GateConfig) -> tuple[dict, dict, str | None]:
    """(fine-tuned metrics, base metrics, external folder or None) the gate compares, per ``cfg.eval_set``.

    Raises:
        InputError: ``eval_set="external"`` but the evaluation has no external results.
    """
    external = evaluation.external
    if cfg.eval_set == "external" and external is None:
        raise InputError("gate.eval_set is 'external' but the evaluation has no external results; run with "
                         "--eval-beir DIR (a BEIR folder with human judgements) or set gate.eval_set=held_out")
    if cfg.eval_set != "held_out" and external is not None:
        return external.finetuned, external.base, external.path
    return evaluation.finetuned, evaluation.base, None


def read_query_scores(evaluation_dir: str | Path, metric: str, external: bool) -> tuple[dict[str, float],
                                                                                      dict[str, float]]:
    """(base, fine-tuned): query id -> ``metric`` of each query evaluate scored (its held-out queries, or with
    ``external`` the external collection's), in evaluate's order.

    Raises:
        InputError: evaluate wrote no per-query records (an older evaluation), or they lack ``metric``.
    """
    records = read_per_query(evaluation_dir, external=external)
    lacking = [r.query_id for r in records if metric not in r.base or metric not in r.finetuned]
    if lacking:
        raise InputError(f"the per-query records of {evaluation_dir} have no {metric!r} (e.g. query "
                         f"{lacking[0]!r})")
    return {r.query_id: r.base[metric] for r in records}, {r.query_id: r.finetuned[metric] for r in records}


def _paired(first: dict[str, float], second: dict[str, float]) -> tuple[list[float], list[float]]:
    """The values of the queries both dicts score, in ``first``'s order."""
    common = [q for q in first if q in second]
    return [first[q] for q in common], [second[q] for q in common]


# ----------------------------------------------------------------------------------------------- MLflow
def mlflow_record(decision: Decision) -> tuple[dict[str, str], dict[str, float]]:
    """(tags, metrics) the gate records in MLflow: tags on the challenger's model version, metrics on the run
    that registered it; every name starts with ``gate.``."""
    tags = {"gate.promote": str(decision.promote).lower(), "gate.rule": decision.rule, "gate.metric": decision.metric,
            "gate.reason": decision.reason, "gate.eval_set": decision.eval_set}
    metrics = {"gate.promote": float(decision.promote), "gate.margin": decision.margin}
    if decision.fallback:
        tags["gate.fallback"] = decision.fallback
    if decision.confidence is not None:
        tags["gate.confidence"] = f"{decision.confidence:g}"
    if decision.non_inferiority_margin is not None:
        tags["gate.non_inferiority_margin"] = f"{decision.non_inferiority_margin:g}"
    if decision.champion_version is not None:
        tags["gate.champion_version"] = str(decision.champion_version)
    for name, iv in (("vs_base", decision.vs_base), ("vs_champion", decision.vs_champion)):
        if iv is None:
            continue
        for field in ("mean", "low", "high"):
            value = getattr(iv, field)
            tags[f"gate.{name}.{field}"] = f"{value:.6f}"
            metrics[f"gate.{name}.{field}"] = value
        tags[f"gate.{name}.n"] = str(iv.n)
        metrics[f"gate.{name}.n"] = float(iv.n)
    return tags, metrics


# ------------------------------------------------------------------------------------------------ stage
def run(
    evaluation_dir: str | Path,
    registry_dir: str | Path,
    chunks_dir: str | Path,
    pairs_dir: str | Path,
    out_dir: str | Path,
    cfg: GateConfig,
    eval_cfg: EvaluateConfig,
    tracking_uri: str,
    external_dir: str | Path | None = None,
) -> Manifest:
    """Compare the registered challenger with base and the current champion; write ``decision.json``.

    Args:
        evaluation_dir: Folder holding ``evaluation.json`` (``base`` and ``finetuned`` metrics) and the
            per-query records (``per_query.jsonl``, ``external_per_query.jsonl``).
        registry_dir: Folder holding ``registry.json`` (model name and the challenger's version).
        chunks_dir: The ``chunks`` artifact (eval split used to re-evaluate the champion).
        pairs_dir: The ``pairs`` artifact.
        out_dir: Output folder: ``decision.json`` + ``manifest.json``.
        cfg: Gate settings (rule, metric, min_improvement, confidence, margins, alias).
        eval_cfg: Evaluation settings, identical to the evaluate stage's (so the numbers are comparable).
        tracking_uri: MLflow tracking URI; empty -> ``$MLFLOW_TRACKING_URI`` -> the one in ``registry.json``.
        external_dir: Where this process reads the external BEIR folder the evaluation recorded (the gate pod's
            copy of the imported artifact on Kubernetes); default: the path recorded by evaluate.

    Returns:
        The manifest; its ``result`` is the :class:`Decision` (also in ``decision.json``).

    Raises:
        InputError: A missing/malformed input file or metric.
        ConfigError: No tracking URI, or MLflow failed.
    """
    from mlflow.exceptions import MlflowException

    from embedforge.registry.mlflow import (
        client_for,
        log_metrics,
        mlflow_error,
        resolve_tracking_uri,
    )

    timer = StageTimer("gate")
    out_dir = Path(out_dir)
    evaluation = read_result(evaluation_dir, EvaluationResult)
    reg = read_result(registry_dir, RegistryRecord)
    model_name, challenger_version = reg.model_name, reg.version
    uri = resolve_tracking_uri(tracking_uri, recorded=reg.tracking_uri)
    client = client_for(uri)

    try:
        champion_version = current_champion(client, model_name, cfg.alias)
    except MlflowException as exc:
        raise mlflow_error(f"read alias {cfg.alias!r} of {model_name!r}", uri, exc) from None
    if champion_version == challenger_version:
        log.info("alias %r already points at the challenger v%s: comparing with base only", cfg.alias, champion_version)
        champion_version = None

    finetuned, base, external = pick_eval_set(evaluation, cfg)
    query_scores, no_evidence = None, ""
    try:
        query_scores = read_query_scores(evaluation_dir, cfg.metric, external=external is not None)
    except InputError as exc:
        no_evidence = f"no per-query scores ({exc})"
    champion_scores = challenger_scores = None
    device = ""
    if champion_version is not None:
        from embedforge.retrieval.encode import pick_device

        device = pick_device("auto")
        # evaluate's numbers come from its own device (a GPU pod on Kubernetes); a champion re-evaluated on
        # another kind differs in the last digits, so then the challenger is re-evaluated here too and the two are
        # compared on one device.
        rerun = bool(evaluation.device) and evaluation.device != device
        where = external_dir or external if external else None
        log.info("re-evaluating champion %s v%s on the same eval set (%s)%s", model_name, champion_version,
                 external or "held-out split",
                 f", and the challenger v{challenger_version} (evaluate ran on {evaluation.device}, this is "
                 f"{device})" if rerun else "")
        with tempfile.TemporaryDirectory(prefix="embedforge-champion-") as tmp:
            versions = [champion_version, challenger_version] if rerun else [champion_version]
            scores = []
            for version in versions:
                try:
                    model_dir = download_version(client, uri, model_name, version, Path(tmp) / f"v{version}")
                except MlflowException as exc:
                    raise mlflow_error(f"download {model_name} v{version}", uri, exc) from None
                scores.append(evaluate_champion(model_dir, chunks_dir, pairs_dir, eval_cfg, external=where))
            champion_scores = scores[0]
            challenger_scores = scores[1] if rerun else None

    evidence = None
    if query_scores is not None:
        base_q, challenger_q = query_scores
        champion_pq = vs_champion = None
        if champion_scores is not None:
            champion_q = {q: v[cfg.metric] for q, v in champion_scores.per_query.items() if cfg.metric in v}
            against = challenger_q if challenger_scores is None else {
                q: v[cfg.metric] for q, v in challenger_scores.per_query.items() if cfg.metric in v}
            champion_pq, vs_champion = _paired(champion_q, against)
        evidence = Evidence(base=list(base_q.values()), challenger=list(challenger_q.values()),
                            champion=champion_pq, challenger_vs_champion=vs_champion)
    decision = decide(finetuned, base, champion_scores.metrics if champion_scores else None, cfg,
                      champion_version=champion_version, challenger_version=challenger_version,
                      challenger_rerun=challenger_scores.metrics if challenger_scores else None,
                      evidence=evidence, no_evidence=no_evidence)
    decision.model_name = model_name
    decision.champion_metrics = champion_scores.metrics if champion_scores else None
    decision.challenger_rerun = challenger_scores.metrics if challenger_scores else None
    decision.device = device
    if external is not None:
        decision.eval_set = f"external:{external}"
        decision.reason += f" (on the external collection {Path(external).name})"
    log.info(decision.reason)
    tags, metrics = mlflow_record(decision)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(model_name, challenger_version, key, value)
        log_metrics(client, reg.run_id, metrics)
    except MlflowException as exc:
        raise mlflow_error(f"record the gate's decision on {model_name!r} version {challenger_version}", uri,
                           exc) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / DECISION_FILE, decision.model_dump(mode="json"))
    return timer.write_manifest(
        out_dir,
        counts={"promote": int(decision.promote), "champion": int(champion_version is not None)},
        inputs={"evaluation": evaluation_dir, "registry": registry_dir, "chunks": chunks_dir, "pairs": pairs_dir},
        config={"gate": cfg.model_dump(mode="json"), "evaluate": eval_cfg.model_dump(mode="json")},
        result=decision,
    )

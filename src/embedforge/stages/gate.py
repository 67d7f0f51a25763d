"""Gate: promote the fine-tuned model only if it beats the base model by a margin AND the current champion.

:func:`decide` is a pure function over metric dicts, so the rule is tested without MLflow. :func:`run` gathers
its inputs: the fine-tuned and base metrics from ``evaluation.json``; the champion (the version the registered
model's ``cfg.alias`` points at, if any, and not the challenger itself) is downloaded from MLflow and
re-evaluated on THE SAME eval set (the ``chunks`` + ``pairs`` artifacts) with
:func:`embedforge.retrieval.ranking.evaluate_model`, so challenger and champion are compared on equal terms even when
the champion was trained and evaluated on other data. It encodes as evaluate does (``eval_cfg.encode``: on a CPU
ONNX Runtime, with the run's graph and embedding cache, so a champion whose embeddings of these texts an earlier
run computed is not encoded again). When evaluate computed its numbers on another device kind
than the gate's (``evaluation.json``'s ``device``: a GPU evaluate pod, a CPU gate), the challenger is downloaded
and re-evaluated here too, so the champion comparison never mixes devices and rounding cannot decide a tie.

Rule (``g`` = gain in the metric's good direction, i.e. ``value - other`` or ``other - value`` when
``greater_is_better`` is False):

* ``g(challenger, base) > 0`` and ``g(challenger, base) >= cfg.min_improvement``, and
* no champion, or ``g(challenger, champion) > 0``.

The numbers compared are those of the held-out split, or — ``cfg.eval_set`` ``auto`` (default) with an
``--eval-beir`` collection, or ``external`` — those of the external, human-judged collection, on which the
champion is then re-evaluated too.

Example:
    >>> from embedforge.config import GateConfig
    >>> d = decide({"ndcg@10": 0.61}, {"ndcg@10": 0.55}, None, GateConfig(min_improvement=0.01))
    >>> d.promote, round(d.margin, 2)
    (True, 0.06)
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from embedforge.config import EvaluateConfig, GateConfig
from embedforge.contracts import (
    DECISION_FILE,
    Decision,
    EvaluationResult,
    Manifest,
    RegistryRecord,
    StageTimer,
    read_chunks,
    read_pairs,
    read_result,
    write_json,
)
from embedforge.errors import InputError
from embedforge.registry.aliases import current_champion, download_version

log = logging.getLogger(__name__)

#: Gains within this distance of a threshold count as meeting it (float noise, e.g. 0.6 - 0.5 vs 0.1).
EPS = 1e-9
#: evaluation.json rounds metrics to this many decimals; the champion's re-evaluation is rounded alike.
EVAL_DECIMALS = 5


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


def decide(
    finetuned: dict[str, Any],
    base: dict[str, Any],
    champion: dict[str, Any] | None,
    cfg: GateConfig,
    champion_version: str | None = None,
    challenger_version: str | None = None,
    challenger_rerun: dict[str, Any] | None = None,
) -> Decision:
    """Decide whether the fine-tuned (challenger) model should be promoted.

    Args:
        finetuned: Metrics of the fine-tuned model, e.g. ``{"ndcg@10": 0.61, ...}``.
        base: Metrics of the base model on the same eval set.
        champion: Metrics of the current champion on the same eval set, or None when there is none.
        cfg: Metric, ``min_improvement`` (absolute gain over base), ``greater_is_better``, alias name.
        champion_version: Registry version of the champion (for the record and the reason).
        challenger_version: Registry version of the challenger (for the record).
        challenger_rerun: The challenger's metrics computed next to the champion's (same process, same device
            kind) when ``finetuned`` came from another device kind; the champion comparison uses them, the base
            comparison keeps ``finetuned`` (computed next to ``base``).

    Returns:
        A :class:`Decision`; ``promote`` is True only when the challenger beats base by at least
        ``cfg.min_improvement`` (and strictly) and beats the champion (strictly), if there is one.

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
    direction = "" if gib else " (lower is better)"
    ch_name = f"champion v{champion_version}" if champion_version else "the champion"

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
        if challenger_rerun is not None:
            reason += f"; both re-evaluated here, fine-tuned {c_vs_ch:.4f}"
    else:
        reason = f"promoted: {head} beats base {b:.4f} by {margin:+.4f} (required {cfg.min_improvement:.4f})"
        reason += (f" and {ch_name} {ch:.4f} by {ch_margin:+.4f}" if ch is not None
                   else " and there is no champion yet")
        if challenger_rerun is not None:
            reason += f" (both re-evaluated here, fine-tuned {c_vs_ch:.4f})"
    return Decision(
        promote=beats_base and beats_champion,
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
    )


# -------------------------------------------------------------------------------------------- champion
def evaluate_champion(model_dir: str | Path, chunks_dir: str | Path, pairs_dir: str | Path,
                      eval_cfg: EvaluateConfig, external: str | Path | None = None) -> dict[str, Any]:
    """Metrics of the model in ``model_dir`` on the eval split of ``chunks_dir`` + ``pairs_dir``, or on the
    external BEIR folder ``external`` when given.

    Computed exactly as the evaluate stage computes the fine-tuned model's numbers (same function, same
    corpus, same queries) and rounded like ``evaluation.json`` (5 decimals), so equal models compare equal.
    """
    from embedforge.retrieval.beir import evaluate_beir_folder
    from embedforge.retrieval.encode import load_model
    from embedforge.retrieval.ranking import evaluate_model

    model = load_model(str(model_dir))  # as evaluate loads the fine-tuned model (and keyed for its ONNX graph)
    if external is not None:
        metrics = evaluate_beir_folder(model, external, eval_cfg)
    else:
        metrics = evaluate_model(model, read_chunks(chunks_dir), read_pairs(pairs_dir), eval_cfg)
    return {k: round(float(v), EVAL_DECIMALS) for k, v in metrics.items()}


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
        evaluation_dir: Folder holding ``evaluation.json`` (``base`` and ``finetuned`` metrics).
        registry_dir: Folder holding ``registry.json`` (model name and the challenger's version).
        chunks_dir: The ``chunks`` artifact (eval split used to re-evaluate the champion).
        pairs_dir: The ``pairs`` artifact.
        out_dir: Output folder: ``decision.json`` + ``manifest.json``.
        cfg: Gate settings (metric, min_improvement, greater_is_better, alias).
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
    champion_metrics = challenger_rerun = None
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
            metrics = []
            for version in versions:
                try:
                    model_dir = download_version(client, uri, model_name, version, Path(tmp) / f"v{version}")
                except MlflowException as exc:
                    raise mlflow_error(f"download {model_name} v{version}", uri, exc) from None
                metrics.append(evaluate_champion(model_dir, chunks_dir, pairs_dir, eval_cfg, external=where))
            champion_metrics = metrics[0]
            challenger_rerun = metrics[1] if rerun else None

    decision = decide(finetuned, base, champion_metrics, cfg,
                      champion_version=champion_version, challenger_version=challenger_version,
                      challenger_rerun=challenger_rerun)
    decision.model_name = model_name
    decision.champion_metrics = champion_metrics
    decision.challenger_rerun = challenger_rerun
    decision.device = device
    if external is not None:
        decision.eval_set = f"external:{external}"
        decision.reason += f" (on the external collection {Path(external).name})"
    log.info(decision.reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / DECISION_FILE, decision.model_dump(mode="json"))
    return timer.write_manifest(
        out_dir,
        counts={"promote": int(decision.promote), "champion": int(champion_version is not None)},
        inputs={"evaluation": evaluation_dir, "registry": registry_dir, "chunks": chunks_dir, "pairs": pairs_dir},
        config={"gate": cfg.model_dump(mode="json"), "evaluate": eval_cfg.model_dump(mode="json")},
        result=decision,
    )

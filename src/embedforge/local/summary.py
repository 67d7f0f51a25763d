"""``summary.json`` of a local run: per-stage status and seconds, counts, metrics, registry version, decision.

:func:`collect` reads every stage's manifest, links the main artifacts (model, ONNX, Triton repository) into the
attempt folder, writes the HTML report and the summary — also for a failed or interrupted run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from embedforge.config import PipelineConfig
from embedforge.contracts import (
    Decision,
    EvaluationResult,
    PromotionRecord,
    RegistryRecord,
    has_manifest,
    read_manifest,
)
from embedforge.disk import link_tree
from embedforge.local.attempts import write_summary
from embedforge.local.logs import StageState
from embedforge.stages.report import REPORT_FILE, write_report


def _artifact(run_dir: Path | None, stage: str, name: str) -> Path | None:
    if run_dir is None:
        return None
    p = run_dir / stage / name
    return p if p.exists() else None


def _copy_tree(src: Path | None, dst: Path) -> None:
    """``dst`` holds ``src``'s files as hard links: the attempt's model/, onnx/, triton/ take no extra space."""
    if src is None:
        return
    if dst.exists():
        shutil.rmtree(dst)
    link_tree(src, dst)


def collect(run_dir: Path | None, out: Path, attempt: Path, stages: dict[str, StageState], cfg: PipelineConfig,
            corpus: Path, pairs: Path | None, eval_beir: Path | None, tracking_uri: str, seconds: float,
            error: str | None, profile_changes: dict[str, Any] | None = None,
            interrupted: bool = False, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the main artifacts into the ``attempt`` folder and write its ``summary.json`` (copied to ``out``)."""
    from embedforge.pipelines.pipeline import STAGES

    art = {stage: _artifact(run_dir, stage, name) for stage, name in STAGES.items()}
    manifests = {stage: read_manifest(d) for stage, d in art.items() if d is not None and has_manifest(d)}
    for stage, st in stages.items():
        if st.status == "pending" and error is None and stage == "promote":
            st.status = "skipped"  # the gate said no
        if st.seconds is None and stage in manifests:
            st.seconds = manifests[stage].seconds

    _copy_tree(art["train"], attempt / "model")
    _copy_tree(art["export"], attempt / "onnx")
    _copy_tree(art["promote"], attempt / "triton")

    counts: dict[str, Any] = {}
    if "ingest" in manifests:
        c = manifests["ingest"].counts
        counts.update({"documents": c.get("documents"), "chunks": c.get("chunks"),
                       "train_documents": c.get("train_documents"), "eval_documents": c.get("eval_documents")})
    if "sdg" in manifests:
        c = manifests["sdg"].counts
        counts["pairs"] = {"train": c.get("train_pairs"), "eval": c.get("eval_pairs"), **{k: c[k] for k in ("pairs_file_rows", "duplicate_queries_merged", "augment_pairs") if k in c}}
    if "mine" in manifests:
        counts["train_examples"] = manifests["mine"].counts.get("examples")
    if "train" in manifests and "augment_rows" in manifests["train"].counts:  # sdg.augment rows the run trained on
        counts["augment_rows_trained"] = manifests["train"].counts["augment_rows"]

    summary: dict[str, Any] = {
        "status": "interrupted" if interrupted else "failed" if error else "succeeded",
        "error": error,
        "attempt": str(attempt),
        **(meta or {}),
        "seconds": round(seconds, 1),
        "inputs": {"corpus": str(corpus), "pairs": str(pairs) if pairs else None,
                   "eval_beir": str(eval_beir) if eval_beir else None, "base_model": cfg.base_model},
        "profile": {"name": cfg.profile, "changed": profile_changes or {}},
        "stages": {n: {"status": s.status, "seconds": s.seconds} for n, s in stages.items()},
        "counts": counts,
        "outputs": {"model": str(attempt / "model") if art["train"] else None,
                    "onnx": str(attempt / "onnx" / "model.onnx") if art["export"] else None,
                    "triton": str(attempt / "triton") if art["promote"] else None,
                    "kfp_run": str(run_dir) if run_dir else None},
    }
    if "sdg" in manifests and manifests["sdg"].result.generator_stats:
        summary["sdg"] = manifests["sdg"].result.generator_stats
    if "train" in manifests and manifests["train"].result.schedule is not None:  # what train.schedule chose, why
        summary["train_schedule"] = manifests["train"].result.schedule.model_dump(mode="json", exclude={"trials"})
    if "evaluate" in manifests:
        ev: EvaluationResult = manifests["evaluate"].result
        summary["evaluation"] = {"primary_metric": ev.primary_metric, "base": ev.base, "finetuned": ev.finetuned}
        if ev.external is not None:
            summary["evaluation"]["external"] = {"base": ev.external.base, "finetuned": ev.external.finetuned,
                                                 "path": ev.external.path}
    if "register" in manifests:
        reg: RegistryRecord = manifests["register"].result
        summary["registry"] = {"name": reg.model_name, "version": reg.version, "run_id": reg.run_id,
                               "tracking_uri": tracking_uri}
    if "gate" in manifests:
        dec: Decision = manifests["gate"].result
        summary["promotion"] = {"promoted": dec.promote and "promote" in manifests, "reason": dec.reason,
                                "decision": dec.model_dump(mode="json")}
        if "promote" in manifests:
            rec: PromotionRecord = manifests["promote"].result
            summary["promotion"].update(published_to=rec.published_to, rollout=rec.rollout)
    summary["outputs"]["report"] = str(write_report(art, attempt / REPORT_FILE, summary["status"], error))
    write_summary(out, attempt, summary)
    return summary

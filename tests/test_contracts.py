"""The data contracts: typed stage results in versioned manifests, read only through contracts' readers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from embedforge import contracts
from embedforge.contracts import (
    RESULT_TYPES,
    Decision,
    EvaluationResult,
    IngestResult,
    StageTimer,
    TrainResult,
    read_manifest,
    read_result,
)
from embedforge.errors import InputError

REPO = Path(__file__).resolve().parents[1]

EVAL = EvaluationResult(primary_metric="ndcg@10", base={"ndcg@10": 0.5}, finetuned={"ndcg@10": 0.6},
                        delta={"ndcg@10": 0.1})


def test_a_result_round_trips_typed(tmp_path):
    StageTimer("evaluate").write_manifest(tmp_path, result=EVAL, counts={"eval_queries": 3})
    m = read_manifest(tmp_path)
    assert isinstance(m.result, EvaluationResult) and m.result == EVAL and m.counts == {"eval_queries": 3}
    assert read_result(tmp_path, EvaluationResult).finetuned["ndcg@10"] == 0.6


def test_fields_given_as_keywords_are_validated_into_the_stage_type(tmp_path):
    m = StageTimer("ingest").write_manifest(tmp_path, corpus_format="folder", base_model="m")
    assert isinstance(m.result, IngestResult) and read_result(tmp_path, IngestResult).corpus_format == "folder"
    with pytest.raises(ValueError, match="corpus_format"):
        StageTimer("ingest").write_manifest(tmp_path, base_model="m")
    with pytest.raises(TypeError, match="TrainResult"):
        StageTimer("train").write_manifest(tmp_path, result=EVAL)


def test_a_manifest_of_an_older_version_fails_with_one_clear_line(tmp_path):
    (tmp_path / contracts.MANIFEST).write_text(json.dumps({
        "schema_version": 1, "stage": "train", "counts": {}, "started_at": 0, "finished_at": 1, "seconds": 1,
        "final_loss": 0.3}))
    with pytest.raises(InputError, match=r"older|another embedforge version.*re-run the train stage"):
        read_result(tmp_path, TrainResult)


def test_a_result_missing_a_field_names_it_and_the_stage(tmp_path):
    StageTimer("evaluate").write_manifest(tmp_path, result=EVAL)
    raw = json.loads((tmp_path / contracts.MANIFEST).read_text())
    del raw["result"]["finetuned"]
    (tmp_path / contracts.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(InputError, match=r"result\.finetuned.*re-run the evaluate stage"):
        read_result(tmp_path, EvaluationResult)


def test_the_wrong_artifact_is_named(tmp_path):
    StageTimer("evaluate").write_manifest(tmp_path, result=EVAL)
    with pytest.raises(InputError, match="output of the evaluate stage, not of the gate stage"):
        read_result(tmp_path, Decision)
    with pytest.raises(InputError, match="no manifest.json"):
        read_result(tmp_path / "nope", Decision)


def test_every_stage_has_one_result_type():
    from embedforge.pipelines.pipeline import STAGES

    assert set(RESULT_TYPES) == set(STAGES)


# ------------------------------------------------------------------ no stage result file read by name elsewhere
RESULT_FILE_NAMES = {"MANIFEST", "EVALUATION_FILE", "REGISTRY_FILE", "DECISION_FILE", "PROMOTION_FILE",
                     "VALIDATION_FILE", "PARITY_FILE"}
#: module -> the result-file names it may use: the stage that writes the report, and why else.
ALLOWED = {
    "evaluate.py": {"EVALUATION_FILE"},  # writes evaluation.json
    "register.py": {"REGISTRY_FILE"},  # writes registry.json
    "gate.py": {"DECISION_FILE"},  # writes decision.json
    "promote.py": {"PROMOTION_FILE"},  # writes promotion.json
    "validate.py": {"VALIDATION_FILE"},  # writes validation.json
    "export.py": {"PARITY_FILE"},  # writes parity.json
    "repository.py": {"MANIFEST", "PARITY_FILE"},  # names the files NOT copied into the Triton repository
}


def _uses(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    literal = {getattr(contracts, n) for n in RESULT_FILE_NAMES}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in RESULT_FILE_NAMES:
                used.add(name)
        elif isinstance(node, ast.Constant) and node.value in literal:
            used.add(next(n for n in RESULT_FILE_NAMES if getattr(contracts, n) == node.value))
    return used


def test_stage_results_are_read_only_through_contracts():
    files = [p for root in ("src/embedforge", "components", "pipelines") for p in (REPO / root).rglob("*.py")
             if "contracts" not in p.relative_to(REPO).parts]
    offenders = {}
    for p in files:
        extra = _uses(p) - ALLOWED.get(p.name, set())
        if extra:
            offenders[str(p.relative_to(REPO))] = sorted(extra)
    assert not offenders, f"read stage results with embedforge.contracts.read_result, not by file name: {offenders}"

"""The model card of a registered version, from one real run (real train, validate, evaluate, register on the
session's MLflow server): its front matter parses and carries evaluation.json's numbers, its body the pairs'
counts, intervals that contain the gain, the training settings; it is README.md of the registered model folder and
the version's description."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from embedforge.contracts import (
    EvaluationResult,
    TrainResult,
    read_manifest,
    read_per_query,
    read_result,
)
from embedforge.registry import model_card
from embedforge.retrieval import stats

pytest_plugins = ["conftest_mlflow"]


@pytest.fixture(scope="module")
def registered(run_artifacts, mlflow_uri):
    """The real run's registered version: (its model folder as downloaded from MLflow, the version, registry.json)."""
    import tempfile

    from embedforge.registry.aliases import download_version
    from embedforge.registry.mlflow import client_for

    reg = json.loads((Path(run_artifacts["register"]) / "registry.json").read_text())
    client = client_for(mlflow_uri)
    folder = download_version(client, mlflow_uri, reg["model_name"], reg["version"], Path(tempfile.mkdtemp()) / "v")
    return Path(folder), client.get_model_version(reg["model_name"], reg["version"]), reg


def test_the_registered_folder_carries_the_card_and_the_version_its_text(registered, run_artifacts, pairs_dir):
    folder, version, reg = registered
    card = (folder / model_card.CARD_FILE).read_text(encoding="utf-8")
    assert version.description == card  # the same text, whole (it fits MLflow's description column)
    assert len(card) <= model_card.MAX_DESCRIPTION

    meta = model_card.front_matter(card)
    train = read_manifest(run_artifacts["train"], TrainResult)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["base_model"] == train.result.base_model and "sentence-transformers" in meta["tags"]
    assert meta["license"] == "apache-2.0"  # what the base model's own card states
    ev = read_result(run_artifacts["evaluate"], EvaluationResult)
    (entry,) = meta["model-index"]
    assert entry["name"] == reg["model_name"]
    held_out = entry["results"][0]["metrics"]
    assert {m["name"]: m["value"] for m in held_out} == ev.finetuned  # exactly evaluation.json's numbers
    assert {m["type"] for m in held_out} >= {"ndcg_at_10", "recall_at_10"}

    # the body: prompts, the pairs' counts from the sdg manifest, each metric's interval around its gain
    prompts = train.result.prompts
    assert f"| query | `{prompts['query']}` |" in card and f"| document | `{prompts['document']}` |" in card
    sdg = read_manifest(pairs_dir)
    assert f"{sdg.counts['pairs']} — {sdg.counts['train_pairs']} train, {sdg.counts['eval_pairs']} held out" in card
    assert f"training rows (query, positive, mined hard negatives): {train.counts['examples']}" in card
    records = read_per_query(run_artifacts["evaluate"])
    rows = {r[0]: r for r in (line.strip("| ").split(" | ") for line in card.splitlines())
            if r[0] in ev.finetuned and len(r) == 6}
    k = ev.primary_metric.partition("@")[2]
    assert set(rows) == {m for m in ev.finetuned if m.endswith(f"@{k}")} and ev.primary_metric in rows
    for metric, (_, base, fine, gain, ci, wtl) in rows.items():
        assert float(base) == pytest.approx(ev.base[metric], abs=1e-4)
        low, high = map(float, re.findall(r"[-+]\d\.\d+", ci))
        assert low <= float(gain) <= high
        c = stats.compare(records, metric)
        assert (c.interval.low, c.interval.high) == pytest.approx((low, high), abs=1e-4)
        assert wtl == f"{c.wins} / {c.ties} / {c.losses}"
    assert f"| steps | {train.counts['steps']} |" in card and f"| batch size | {train.config['batch_size']} |" in card
    assert "POST /v1/embeddings" in card and "SentenceTransformer(" in card


def test_the_card_replaces_the_one_sentence_transformers_writes(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                                evaluation_dir_factory, validation_dir, mlflow_uri):
    """A model folder saved by sentence-transformers has its own README.md; the version's is ours, and the folder
    still loads. Without a train manifest (a folder no train stage wrote) the card says so and takes the prompts
    saved in the folder and the base model register was given."""
    from sentence_transformers import SentenceTransformer

    from embedforge.config import RegisterConfig
    from embedforge.registry.aliases import download_version
    from embedforge.registry.mlflow import client_for
    from embedforge.stages import register

    assert "sentence-transformers" in (tiny_model / model_card.CARD_FILE).read_text(encoding="utf-8")
    evaluation = evaluation_dir_factory(tmp_path / "evaluation", {"ndcg@10": 0.5}, {"ndcg@10": 0.4})
    register.run(tiny_model, tiny_onnx_dir, evaluation, validation_dir, tmp_path / "registry",
                 RegisterConfig(model_name=model_name), mlflow_uri, params={}, base_model="/models/base")
    client = client_for(mlflow_uri)
    folder = download_version(client, mlflow_uri, model_name, "1", tmp_path / "dl")
    card = (folder / model_card.CARD_FILE).read_text(encoding="utf-8")
    assert card == client.get_model_version(model_name, "1").description
    meta = model_card.front_matter(card)
    assert meta["base_model"] == "/models/base" and "license" not in meta  # no card there: licence unknown
    assert meta["model-index"][0]["results"][0]["metrics"] == [{"type": "ndcg_at_10", "value": 0.5, "name": "ndcg@10"}]
    assert "| query | `query: ` |" in card and "no train stage wrote this model folder" in card
    assert "No per-query records" in card
    SentenceTransformer(str(folder), device="cpu")  # the folder stays a loadable model with the card in it


def test_a_long_card_is_cut_at_a_line_for_mlflow_and_front_matter_is_required():
    card = "---\nlibrary_name: sentence-transformers\n---\n\n" + "\n".join(f"line {i} " + "x" * 60 for i in range(200))
    cut = model_card.description(card)
    assert len(cut) <= model_card.MAX_DESCRIPTION and cut.startswith(card[:4000]) and "README.md" in cut
    assert model_card.description("short") == "short"
    with pytest.raises(Exception, match="front matter"):
        model_card.front_matter("# no front matter\n")

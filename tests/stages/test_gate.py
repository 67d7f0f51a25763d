"""Gate: the pure decision rule (no champion / wins / loses / margin / lower-is-better), and ``run`` against a real
MLflow server where the champion's model is really downloaded and re-evaluated on the same eval set."""

from __future__ import annotations

import json

import pytest

from embedforge.contracts import Decision, read_result

pytest_plugins = ["conftest_mlflow"]

M = "ndcg@10"


def _cfg(**kw):
    from embedforge.config import GateConfig

    return GateConfig(**kw)


# ----------------------------------------------------------------------------------------------- decide()
def test_no_champion_and_beats_base_promotes():
    from embedforge.stages.gate import decide

    d = decide({M: 0.61}, {M: 0.55}, None, _cfg(min_improvement=0.02))
    assert d.promote is True
    assert d.champion_value is None and d.champion_version is None and d.champion_margin is None
    assert d.margin == pytest.approx(0.06)
    assert (d.challenger, d.base_value, d.metric, d.greater_is_better) == (0.61, 0.55, M, True)
    assert "0.6100" in d.reason and "0.5500" in d.reason and "no champion" in d.reason


def test_beats_base_but_loses_to_champion():
    from embedforge.stages.gate import decide

    d = decide({M: 0.61}, {M: 0.55}, {M: 0.63}, _cfg(), champion_version="4", challenger_version="5")
    assert d.promote is False
    assert (d.champion_value, d.champion_version, d.challenger_version) == (0.63, "4", "5")
    assert d.champion_margin == pytest.approx(-0.02)
    assert "champion v4 0.6300" in d.reason and d.reason.startswith("not promoted")


def test_beats_base_and_champion():
    from embedforge.stages.gate import decide

    d = decide({M: 0.61}, {M: 0.55}, {M: 0.60}, _cfg(), champion_version="4")
    assert d.promote is True and d.champion_margin == pytest.approx(0.01)
    assert "champion v4 0.6000" in d.reason


def test_fails_min_improvement():
    from embedforge.stages.gate import decide

    d = decide({M: 0.56}, {M: 0.55}, None, _cfg(min_improvement=0.02))
    assert d.promote is False
    assert "only +0.0100" in d.reason and "0.0200" in d.reason
    # exactly the margin passes (float noise tolerated)
    assert decide({M: 0.6}, {M: 0.5}, None, _cfg(min_improvement=0.1)).promote is True


def test_equal_to_base_or_worse_is_not_promoted():
    from embedforge.stages.gate import decide

    assert decide({M: 0.55}, {M: 0.55}, None, _cfg()).promote is False
    d = decide({M: 0.50}, {M: 0.55}, None, _cfg())
    assert d.promote is False and "does not beat base" in d.reason and d.margin == pytest.approx(-0.05)
    # a tie with the champion keeps the champion
    assert decide({M: 0.60}, {M: 0.55}, {M: 0.60}, _cfg(), champion_version="1").promote is False


def test_lower_is_better():
    from embedforge.stages.gate import decide

    cfg = _cfg(metric="loss@10", greater_is_better=False, min_improvement=0.05)
    d = decide({"loss@10": 0.30}, {"loss@10": 0.40}, None, cfg)
    assert d.promote is True and d.margin == pytest.approx(0.10) and "lower is better" in d.reason
    assert decide({"loss@10": 0.38}, {"loss@10": 0.40}, None, cfg).promote is False  # gain 0.02 < 0.05
    assert decide({"loss@10": 0.50}, {"loss@10": 0.40}, None, cfg).promote is False
    lost = decide({"loss@10": 0.30}, {"loss@10": 0.40}, {"loss@10": 0.25}, cfg, champion_version="2")
    assert lost.promote is False and lost.champion_margin == pytest.approx(-0.05)


def test_missing_or_bad_metric_is_an_input_error():
    from embedforge.errors import InputError
    from embedforge.stages.gate import decide

    with pytest.raises(InputError, match="fine-tuned metrics have no 'ndcg@10'"):
        decide({"recall@10": 0.5}, {M: 0.5}, None, _cfg())
    with pytest.raises(InputError, match="not a finite number"):
        decide({M: float("nan")}, {M: 0.5}, None, _cfg())


def test_a_rerun_challenger_decides_against_the_champion_only():
    from embedforge.stages.gate import decide

    d = decide({M: 0.70}, {M: 0.60}, {M: 0.65}, _cfg(), champion_version="1", challenger_rerun={M: 0.64})
    assert d.promote is False and d.margin == pytest.approx(0.10) and d.champion_margin == pytest.approx(-0.01)


# ------------------------------------------------------------------------------- decide(): the interval rule
def _scores(n, gain, noise, seed=0, base=None):
    """Per-query nDCG-like values of ``n`` queries: ``base`` (seeded uniform) and ``base + gain + noise``,
    clipped to [0, 1] like a real metric."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b = rng.uniform(0.2, 0.8, n) if base is None else np.asarray(base)
    c = np.clip(b + gain + rng.normal(0.0, noise, n), 0.0, 1.0)
    return b.tolist(), c.tolist()


def _means(values):
    return {M: sum(values) / len(values)}


def test_a_noisy_small_gain_is_promoted_by_the_point_rule_but_not_by_the_interval_rule():
    from embedforge.retrieval.stats import paired_bootstrap
    from embedforge.stages.gate import Evidence, decide

    base, challenger = _scores(64, 0.01, 0.10)
    assert sum(challenger) > sum(base)  # a gain on average...
    ev = Evidence(base=base, challenger=challenger)
    d = decide(_means(challenger), _means(base), None, _cfg(), evidence=ev)
    want = paired_bootstrap(base, challenger)  # ...that the 64 queries cannot tell from noise
    assert want.low < 0 < want.high
    assert d.promote is False and d.rule == "interval" and d.fallback == "" and d.confidence == 0.95
    assert (d.vs_base.mean, d.vs_base.low, d.vs_base.high, d.vs_base.n) == pytest.approx(
        (want.mean, want.low, want.high, 64))
    assert d.reason == (f"not promoted: gain over base {want.mean:+.4f} ndcg@10, 95 % interval [{want.low:+.4f}, "
                        f"{want.high:+.4f}] over 64 eval queries includes 0")

    point = decide(_means(challenger), _means(base), None, _cfg(rule="point"), evidence=ev)
    assert point.promote is True and point.rule == "point" and point.vs_base == d.vs_base
    assert f"[{want.low:+.4f}, {want.high:+.4f}] over 64 eval queries" in point.reason  # shown, not deciding


def test_a_clear_gain_is_promoted_and_min_improvement_applies_to_the_lower_bound():
    from embedforge.stages.gate import Evidence, decide

    base, challenger = _scores(64, 0.08, 0.05)
    ev = Evidence(base=base, challenger=challenger)
    d = decide(_means(challenger), _means(base), None, _cfg(), evidence=ev)
    assert d.promote is True and 0.05 < d.vs_base.low < d.vs_base.mean < d.vs_base.high
    assert d.reason.startswith("promoted: gain over base +0.0") and "lies above 0; there is no champion yet" in d.reason
    # the mean clears 0.075, the lower bound does not
    strict = decide(_means(challenger), _means(base), None, _cfg(min_improvement=0.075), evidence=ev)
    assert d.vs_base.low < 0.075 < d.vs_base.mean
    assert strict.promote is False and "has its lower bound below the required +0.0750" in strict.reason
    # a wider interval (99 %) and more resamples are honoured
    wide = decide(_means(challenger), _means(base), None, _cfg(confidence=0.99, bootstrap_resamples=5000), evidence=ev)
    assert wide.vs_base.low < d.vs_base.low and wide.vs_base.high > d.vs_base.high and "99 % interval" in wide.reason


def test_a_loss_is_not_above_0():
    from embedforge.stages.gate import Evidence, decide

    base, challenger = _scores(40, -0.10, 0.03)
    d = decide(_means(challenger), _means(base), None, _cfg(), evidence=Evidence(base=base, challenger=challenger))
    assert d.promote is False and d.vs_base.high < 0 and d.reason.endswith("is not above 0")


def test_non_inferiority_margin_against_the_champion_both_ways():
    from embedforge.stages.gate import Evidence, decide

    base, challenger = _scores(64, 0.08, 0.05)
    # the champion is a little better than the challenger on the same queries: within a 0.01 margin, not within 0
    _, champion = _scores(64, 0.004, 0.004, seed=1, base=challenger)
    ev = Evidence(base=base, challenger=challenger, champion=champion)
    kw = dict(champion_version="3", challenger_version="4", evidence=ev)
    d = decide(_means(challenger), _means(base), _means(champion), _cfg(), **kw)
    assert -0.01 < d.vs_champion.low < d.vs_champion.mean < 0 and d.vs_champion.n == 64
    assert d.promote is True and "gain over champion v3" in d.reason and "stays at or above -0.0100" in d.reason
    assert d.non_inferiority_margin == 0.01 and d.champion_margin < 0  # the point rule would keep the champion
    assert decide(_means(challenger), _means(base), _means(champion), _cfg(rule="point"), **kw).promote is False

    strict = decide(_means(challenger), _means(base), _means(champion), _cfg(non_inferiority_margin=0.0), **kw)
    assert strict.promote is False and "falls below +0.0000" in strict.reason
    assert strict.reason.startswith("not promoted: gain over base")

    # a champion clearly better than the challenger keeps its place under the default margin
    _, strong = _scores(64, 0.05, 0.01, seed=2, base=challenger)
    ev = Evidence(base=base, challenger=challenger, champion=strong)
    lost = decide(_means(challenger), _means(base), _means(strong), _cfg(), champion_version="3", evidence=ev)
    assert lost.promote is False and lost.vs_champion.high < 0 and "falls below -0.0100" in lost.reason


def test_lower_is_better_reverses_the_intervals():
    from embedforge.stages.gate import Evidence, decide

    cfg = _cfg(metric="loss@10", greater_is_better=False)
    base, challenger = _scores(50, -0.06, 0.03)  # lower values: better
    d = decide({"loss@10": sum(challenger) / 50}, {"loss@10": sum(base) / 50}, None, cfg,
               evidence=Evidence(base=base, challenger=challenger))
    assert d.promote is True and d.vs_base.low > 0.04 and "lower is better" in d.reason


def test_fewer_than_two_queries_give_no_interval_and_no_promotion():
    from embedforge.stages.gate import Evidence, decide

    ev = Evidence(base=[0.5], challenger=[0.9])
    d = decide({M: 0.9}, {M: 0.5}, None, _cfg(), evidence=ev)
    assert d.promote is False and d.vs_base is None and d.rule == "interval"
    assert d.reason == ("not promoted: 1 paired eval query is too few for a 95 % interval of the gain over base (the "
                        "interval rule needs at least 2; gate.rule=point decides on the means)")
    assert decide({M: 0.9}, {M: 0.5}, None, _cfg(rule="point"), evidence=ev).promote is True


def test_missing_per_query_evidence_falls_back_to_the_point_rule_and_says_so():
    from embedforge.stages.gate import Evidence, decide

    d = decide({M: 0.61}, {M: 0.55}, None, _cfg(), no_evidence="no per-query scores (per_query.jsonl is missing)")
    assert d.promote is True and d.rule == "point" and d.vs_base is None
    assert d.fallback == "no per-query scores (per_query.jsonl is missing): decided by the point rule"
    assert d.reason.endswith(f"({d.fallback})")
    # evidence without the champion's scores cannot pair the champion comparison either
    base, challenger = _scores(64, 0.08, 0.05)
    d = decide(_means(challenger), _means(base), {M: 0.1}, _cfg(), champion_version="2",
               evidence=Evidence(base=base, challenger=challenger))
    assert d.rule == "point" and "no per-query scores of champion v2: decided by the point rule" in d.reason
    # the point rule asked for is no fallback
    assert decide({M: 0.61}, {M: 0.55}, None, _cfg(rule="point")).fallback == ""


def test_unpaired_evidence_is_refused():
    from embedforge.stages.gate import Evidence

    with pytest.raises(ValueError, match="not paired"):
        Evidence(base=[0.1, 0.2], challenger=[0.3])
    with pytest.raises(ValueError, match="not paired"):
        Evidence(base=[0.1, 0.2], challenger=[0.3, 0.4], champion=[0.5])


def test_mlflow_record_names_every_number_gate_dot():
    from embedforge.stages.gate import Evidence, decide, mlflow_record

    base, challenger = _scores(64, 0.08, 0.05)
    _, champion = _scores(64, 0.0, 0.01, seed=1, base=challenger)
    d = decide(_means(challenger), _means(base), _means(champion), _cfg(), champion_version="1",
               evidence=Evidence(base=base, challenger=challenger, champion=champion))
    tags, metrics = mlflow_record(d)
    assert all(k.startswith("gate.") for k in (*tags, *metrics))
    assert tags["gate.rule"] == "interval" and tags["gate.reason"] == d.reason and tags["gate.promote"] == "true"
    assert float(tags["gate.vs_base.low"]) == pytest.approx(d.vs_base.low, abs=1e-6)
    assert metrics["gate.vs_champion.high"] == d.vs_champion.high and metrics["gate.vs_champion.n"] == 64
    assert tags["gate.confidence"] == "0.95" and tags["gate.non_inferiority_margin"] == "0.01"


def test_negative_min_improvement_is_rejected():
    from embedforge.config import load_config
    from embedforge.errors import ConfigError

    with pytest.raises(ConfigError, match="gate.min_improvement"):
        load_config(overrides=["gate.min_improvement=-0.1"])


# ------------------------------------------------------------------------------------------ run() + MLflow
@pytest.fixture(scope="module")
def champion_metrics(chunks_dir, pairs_dir, tiny_model) -> dict[str, float]:
    """The real metrics of the (weak) champion model on the shared eval set, computed independently."""
    from sentence_transformers import SentenceTransformer

    from embedforge.config import EvaluateConfig
    from embedforge.contracts import read_chunks, read_pairs
    from embedforge.retrieval.ranking import evaluate_model

    m = evaluate_model(SentenceTransformer(str(tiny_model), device="cpu"), read_chunks(chunks_dir),
                       read_pairs(pairs_dir), EvaluateConfig())
    return {k: round(v, 5) for k, v in m.items()}


def _register(tmp_path, tag, uri, name, model_dir, onnx_dir, validation_dir, evaluation_dir_factory,
              finetuned, base):
    from embedforge.config import RegisterConfig
    from embedforge.stages import register as registry

    ev = evaluation_dir_factory(tmp_path / f"evaluation-{tag}", finetuned, base)
    out = tmp_path / f"registry-{tag}"
    registry.run(model_dir, onnx_dir, ev, validation_dir, out, RegisterConfig(model_name=name), uri, params={})
    return ev, out


def _set_alias(uri, name, version, alias="champion"):
    from mlflow import MlflowClient

    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(name, alias, version)


def _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, uri, **cfg):
    from embedforge.config import EvaluateConfig
    from embedforge.stages import gate

    return gate.run(ev, reg, chunks_dir, pairs_dir, tmp_path / "decision", _cfg(**cfg), EvaluateConfig(), uri).result


def test_run_without_champion_writes_decision(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                              evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri):
    ev, reg = _register(tmp_path, "c", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                        evaluation_dir_factory, {M: 0.60}, {M: 0.55})
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri, min_improvement=0.01)
    assert d.promote is True and d.champion_version is None and d.challenger_version == "1"
    saved = json.loads((tmp_path / "decision" / "decision.json").read_text())
    assert saved["promote"] is True and saved["model_name"] == model_name and saved["margin"] == pytest.approx(0.05)
    # an evaluation without per-query records (written before evaluate wrote them): the point rule, said plainly
    assert d.rule == "point" and d.vs_base is None
    assert d.fallback.startswith("no per-query scores (") and "per_query.jsonl" in d.fallback
    assert d.reason.endswith("decided by the point rule)")
    from mlflow import MlflowClient

    tags = MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_model_version(model_name, "1").tags
    assert tags["gate.rule"] == "point" and tags["gate.fallback"] == d.fallback and tags["gate.promote"] == "true"
    manifest = json.loads((tmp_path / "decision" / "manifest.json").read_text())
    assert manifest["stage"] == "gate" and manifest["counts"] == {"promote": 1, "champion": 0}

    # an alias that already points at the challenger itself is not a champion to beat
    _set_alias(mlflow_uri, model_name, "1")
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri)
    assert d.promote is True and d.champion_version is None


@pytest.mark.parametrize("challenger, promoted", [(0.90, True), (0.20, False)], ids=["beats-champion", "loses"])
def test_champion_is_downloaded_and_reevaluated(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                                evaluation_dir_factory, chunks_dir, pairs_dir, champion_metrics,
                                                challenger, promoted, mlflow_uri):
    real = champion_metrics[M]
    assert 0.20 < real < 0.90  # the random model sits between the two challengers (measured: 0.36)
    # v1: the weak model, registered with flattering numbers from its own run, becomes champion
    _register(tmp_path, "champ", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
              evaluation_dir_factory, {M: 0.99}, {M: 0.10})
    _set_alias(mlflow_uri, model_name, "1")
    # v2: a challenger that beats its base in both cases
    ev, reg = _register(tmp_path, "c", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                        evaluation_dir_factory, {M: challenger}, {M: challenger - 0.05})
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri)
    assert d.champion_version == "1" and d.challenger_version == "2"
    # the champion's value is its real re-evaluation on this eval set, not the 0.99 it was registered with
    assert d.champion_value == pytest.approx(real, abs=1e-9)
    assert d.margin == pytest.approx(0.05)
    assert d.promote is promoted
    if not promoted:
        assert "does not beat champion v1" in d.reason and d.champion_margin < 0
    assert read_result(tmp_path / "decision", Decision).champion_metrics[M] == pytest.approx(real)


def test_numbers_from_another_device_kind_are_not_compared_with_the_champion(
        tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir, chunks_dir, pairs_dir, champion_metrics,
        mlflow_uri):
    """evaluate ran on a GPU, the gate runs on a CPU: the challenger is re-evaluated here next to the champion.

    Challenger and champion are the same model, so on one device they tie and the challenger is not promoted —
    even though evaluate (on "cuda") recorded a value above the champion's.
    """
    from conftest_mlflow import write_evaluation

    real = champion_metrics[M]
    _register(tmp_path, "champ", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
              write_evaluation, {M: real}, {M: real - 0.1})
    _set_alias(mlflow_uri, model_name, "1")
    ev = write_evaluation(tmp_path / "evaluation-gpu", {M: real + 0.00002}, {M: real - 0.1}, device="cuda")
    _, reg = _register(tmp_path, "c", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                       lambda out, *a: ev, None, None)
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri)
    assert d.device == "cpu" and d.challenger_rerun[M] == pytest.approx(real, abs=1e-9)
    assert d.champion_value == pytest.approx(real, abs=1e-9) and d.champion_margin == pytest.approx(0, abs=1e-9)
    assert d.promote is False and "both re-evaluated here" in d.reason
    # the base comparison keeps evaluate's own numbers (computed next to the base model's)
    assert d.challenger == pytest.approx(real + 0.00002) and d.margin == pytest.approx(0.10002)

    # numbers from the gate's own device kind: no second evaluation
    same = write_evaluation(tmp_path / "evaluation-cpu", {M: 0.95}, {M: 0.5}, device="cpu")
    d = _gate(tmp_path, same, reg, chunks_dir, pairs_dir, mlflow_uri)
    assert d.challenger_rerun is None and d.promote is True


def test_the_champions_real_reevaluation_is_paired_query_by_query(
        tmp_path, model_name, saved_base_model, base_model, tiny_onnx_dir, validation_dir, chunks_dir, pairs_dir,
        mlflow_uri):
    """The real MiniLM with query/passage prompts is champion v1 and, unchanged, challenger v2, evaluated by the real
    evaluate stage against MiniLM without prompts. The gate downloads and re-evaluates the champion per query: its
    scores are evaluate's scores of the challenger, query by query, so the challenger-minus-champion interval is
    exactly 0 over every eval query; the gain over base is evaluate's per-query records, paired. The same holds on
    an external collection (evaluate's external_per_query.jsonl). MLflow gets it all."""
    from mlflow import MlflowClient

    from embedforge.config import EvaluateConfig
    from embedforge.contracts import (
        GainInterval,
        RegistryRecord,
        read_chunks,
        read_pairs,
        read_per_query,
    )
    from embedforge.retrieval.beir import write_beir_split
    from embedforge.retrieval.ranking import build_eval_set
    from embedforge.retrieval.stats import paired_bootstrap
    from embedforge.stages import evaluate

    chunks = read_chunks(chunks_dir)
    beir = write_beir_split(tmp_path / "beir", chunks, build_eval_set(chunks, read_pairs(pairs_dir)))
    ev = tmp_path / "evaluation"
    evaluate.run(chunks_dir, pairs_dir, base_model, saved_base_model, ev, EvaluateConfig(), eval_beir=beir)
    for tag in ("champ", "c"):
        _, reg = _register(tmp_path, tag, mlflow_uri, model_name, saved_base_model, tiny_onnx_dir, validation_dir,
                           lambda out, *a: ev, None, None)
        if tag == "champ":
            _set_alias(mlflow_uri, model_name, "1")

    # on the external collection (gate.eval_set=auto with one): its per-query records, the champion re-ranked on it
    external = read_per_query(ev, external=True)
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri)
    assert d.eval_set == f"external:{beir}" and d.rule == "interval" and d.fallback == ""
    assert d.vs_champion == GainInterval(mean=0.0, low=0.0, high=0.0, n=len(external)) and len(external) > 2
    want = paired_bootstrap([r.base[M] for r in external], [r.finetuned[M] for r in external])
    assert (d.vs_base.low, d.vs_base.high, d.vs_base.n) == (want.low, want.high, len(external))

    # on the held-out split
    records = read_per_query(ev)
    n = len(records)
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri, eval_set="held_out")
    assert d.rule == "interval" and d.fallback == "" and (d.champion_version, d.challenger_version) == ("1", "2")
    assert d.vs_champion == GainInterval(mean=0.0, low=0.0, high=0.0, n=n) and n > 2
    want = paired_bootstrap([r.base[M] for r in records], [r.finetuned[M] for r in records])
    assert d.vs_base == GainInterval(mean=want.mean, low=want.low, high=want.high, n=n)
    assert d.promote is (want.low > 0)  # non-inferior to itself: the base comparison decides
    assert f"[{want.low:+.4f}, {want.high:+.4f}] over {n} eval queries" in d.reason
    assert f"gain over champion v1 +0.0000, 95 % interval [+0.0000, +0.0000] over {n} eval queries" in d.reason

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    tags = client.get_model_version(model_name, "2").tags
    assert tags["gate.rule"] == "interval" and tags["gate.reason"] == d.reason and tags["gate.vs_champion.n"] == str(n)
    assert float(tags["gate.vs_base.low"]) == pytest.approx(want.low, abs=1e-6)
    metrics = client.get_run(read_result(reg, RegistryRecord).run_id).data.metrics
    assert metrics["gate.vs_base.high"] == pytest.approx(want.high) and metrics["gate.vs_champion.low"] == 0.0
    assert metrics["gate.promote"] == float(d.promote)


def test_component_returns_the_bool(tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                                    evaluation_dir_factory, chunks_dir, pairs_dir, mlflow_uri):
    from embedforge.components.gate.component import gate
    from kfp import dsl

    ev, reg = _register(tmp_path, "c", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                        evaluation_dir_factory, {M: 0.56}, {M: 0.55})
    args = dict(evaluation=dsl.Artifact(uri=str(ev)), registry=dsl.Artifact(uri=str(reg)),
                chunks=dsl.Dataset(uri=str(chunks_dir)), pairs=dsl.Dataset(uri=str(pairs_dir)),
                evaluate_config={}, tracking_uri=mlflow_uri)
    out = dsl.Artifact(uri=str(tmp_path / "d1"))
    assert gate.python_func(config={"min_improvement": 0.0}, decision=out, **args) is True
    assert out.metadata["promote"] is True
    out2 = dsl.Artifact(uri=str(tmp_path / "d2"))
    assert gate.python_func(config={"min_improvement": 0.05}, decision=out2, **args) is False
    assert json.loads((tmp_path / "d2" / "decision.json").read_text())["promote"] is False


def test_external_collection_decides_when_the_run_has_one(tmp_path, model_name, tiny_model, tiny_onnx_dir,
                                                         validation_dir, evaluation_dir_factory, chunks_dir,
                                                         pairs_dir, mlflow_uri):
    """eval_set=auto: with external (human-judged) results the gate compares those, and re-evaluates the champion
    on the external folder; held_out ignores them; external without external results is an input error."""
    from sentence_transformers import SentenceTransformer

    from embedforge.config import EvaluateConfig
    from embedforge.contracts import read_chunks, read_pairs
    from embedforge.errors import InputError
    from embedforge.stages.evaluate import (
        build_eval_set,
        evaluate_beir_folder,
        write_beir_split,
    )

    chunks = read_chunks(chunks_dir)
    beir = write_beir_split(tmp_path / "beir", chunks, build_eval_set(chunks, read_pairs(pairs_dir)))
    real = round(evaluate_beir_folder(SentenceTransformer(str(tiny_model), device="cpu"), beir, EvaluateConfig())[M], 5)
    _register(tmp_path, "champ", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
              evaluation_dir_factory, {M: 0.99}, {M: 0.10})
    _set_alias(mlflow_uri, model_name, "1")
    # v2 looks great on its held-out pairs, but on the human-judged collection it trails the champion
    external = {"path": str(beir), "base": {M: real - 0.02}, "finetuned": {M: real - 0.01}}
    ev, reg = _register(tmp_path, "c", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                        lambda out, ft, b: evaluation_dir_factory(out, ft, b, external), {M: 0.90}, {M: 0.50})
    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri)
    assert d.eval_set == f"external:{beir}" and "external collection beir" in d.reason
    assert d.champion_value == pytest.approx(real, abs=1e-9) and d.challenger == pytest.approx(real - 0.01)
    assert d.promote is False and d.champion_margin < 0

    d = _gate(tmp_path, ev, reg, chunks_dir, pairs_dir, mlflow_uri, eval_set="held_out")
    assert d.eval_set == "held_out" and d.challenger == pytest.approx(0.90) and d.promote is True

    ev_plain = evaluation_dir_factory(tmp_path / "ev-plain", {M: 0.9}, {M: 0.5})
    with pytest.raises(InputError, match="--eval-beir"):
        _gate(tmp_path, ev_plain, reg, chunks_dir, pairs_dir, mlflow_uri, eval_set="external")


def test_component_reevaluates_the_champion_on_its_own_copy_of_the_imported_external_set(
        tmp_path, model_name, tiny_model, tiny_onnx_dir, validation_dir, evaluation_dir_factory, chunks_dir,
        pairs_dir, mlflow_uri):
    """On Kubernetes (``--inputs artifacts``) evaluate records the external set's path in *its* pod; the gate pod
    gets the same imported artifact at another path and must use that copy, not the recorded path."""
    import shutil

    from embedforge.components.gate.component import gate
    from kfp import dsl
    from sentence_transformers import SentenceTransformer

    from embedforge.config import EvaluateConfig
    from embedforge.contracts import read_chunks, read_pairs
    from embedforge.stages.evaluate import (
        build_eval_set,
        evaluate_beir_folder,
        write_beir_split,
    )

    chunks = read_chunks(chunks_dir)
    beir = write_beir_split(tmp_path / "evaluate-pod" / "beir", chunks, build_eval_set(chunks, read_pairs(pairs_dir)))
    real = round(evaluate_beir_folder(SentenceTransformer(str(tiny_model), device="cpu"), beir, EvaluateConfig())[M], 5)
    gate_copy = shutil.copytree(beir, tmp_path / "gate-pod" / "beir")
    shutil.rmtree(tmp_path / "evaluate-pod")  # the recorded path does not exist where the gate runs
    _register(tmp_path, "champ", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
              evaluation_dir_factory, {M: 0.99}, {M: 0.10})
    _set_alias(mlflow_uri, model_name, "1")
    external = {"path": str(beir), "base": {M: real - 0.02}, "finetuned": {M: real + 0.01}}
    ev, reg = _register(tmp_path, "c", mlflow_uri, model_name, tiny_model, tiny_onnx_dir, validation_dir,
                        lambda out, ft, b: evaluation_dir_factory(out, ft, b, external), {M: 0.90}, {M: 0.50})
    out = dsl.Artifact(uri=str(tmp_path / "decision"))
    promoted = gate.python_func(
        evaluation=dsl.Artifact(uri=str(ev)), registry=dsl.Artifact(uri=str(reg)),
        chunks=dsl.Dataset(uri=str(chunks_dir)), pairs=dsl.Dataset(uri=str(pairs_dir)), config={},
        evaluate_config={}, tracking_uri=mlflow_uri, decision=out, eval_beir_artifact=dsl.Dataset(uri=str(gate_copy)))
    decision = read_result(tmp_path / "decision", Decision)
    assert decision.champion_value == pytest.approx(real, abs=1e-9) and promoted is True

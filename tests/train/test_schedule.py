"""train.schedule=auto: the held-out slice of the train rows, its scoring with the real base model, the choice
rules, and a real auto run that records what it tried, what won and why, within its step budget."""

from __future__ import annotations

import pytest

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts import ScheduleTrial, TrainExample
from embedforge.contracts.positives import known_positives
from embedforge.stages import train
from embedforge.stages.train import schedule
from embedforge.stages.train.distributed import DistContext
from embedforge.stages.train.setup import load_for_training

SMALL = {"batch_size": 4, "max_seq_length": 32, "warmup_ratio": 0.0, "seed": 7, "device": "cpu"}


def _rows(n: int) -> list[TrainExample]:
    return [TrainExample(anchor=f"query {i}", positive=f"doc {i}", negatives=[f"doc {i + 1}"]) for i in range(n)]


def test_held_out_queries_are_a_seeded_disjoint_slice_of_the_train_rows():
    rows = _rows(40) + [TrainExample(anchor="query 0", positive="doc 0 bis")]
    kept, held = schedule.split_queries(rows, 0.25, seed=3)
    assert len(held) == 10 and not kept & held and kept | held == {r.anchor for r in rows}
    assert (kept, held) == schedule.split_queries(rows, 0.25, seed=3)
    assert held != schedule.split_queries(rows, 0.25, seed=4)[1]
    known = {"query 0": {"doc 0", "doc 0 bis", "doc 0 grade 1"}}
    task = schedule.held_out_set(rows + [TrainExample(anchor="x", positive="doc 0 grade 1")], {"query 0"}, known,
                                 max_pool=5, seed=3)
    assert task.pool[:3] == ["doc 0", "doc 1", "doc 0 bis"] and len(task.pool) == 5  # own texts first, then others
    assert {task.pool[i] for i in task.relevant[0]} == {"doc 0", "doc 0 bis"}
    assert {task.pool[i] for i in task.ignored[0]} <= {"doc 0 grade 1"}  # lower grade: neither relevant nor ranked


def test_score_ranks_the_pool_with_the_model_and_leaves_out_the_ignored_texts(base_model, mined_dir):
    model = load_for_training(base_model, TrainConfig(**SMALL), PromptsConfig())
    queries = ["how do I open a file in python", "what is a list comprehension"]
    pool = ["open a file in python with open()", "a list comprehension builds a list from an iterable",
            "how do I open a file in python", "bananas are yellow"]
    perfect = schedule.HeldOut(queries=queries, pool=pool, relevant=[{0}, {1}], ignored=[{2}, set()])
    assert schedule.per_query(model, perfect) == pytest.approx([1.0, 1.0])
    not_ignored = schedule.HeldOut(queries=queries, pool=pool, relevant=[{0}, {1}], ignored=[set(), set()])
    assert schedule.per_query(model, not_ignored)[0] < 1.0  # the query's own text outranks its positive
    # the scoring of FSDP-sharded probes (training-time forward under no_grad) ranks as model.encode does
    held = schedule.held_out_set(contracts.read_train_examples(mined_dir)[:30],
                                 {r.anchor for r in contracts.read_train_examples(mined_dir)[:30]}, {}, 200, seed=3)
    assert schedule.per_query(model, held, sharded=True) == pytest.approx(schedule.per_query(model, held), abs=1e-6)


def _trial(lr: float, scores: dict[str, float], spread: float = 0.0, n: int = 40) -> ScheduleTrial:
    """A probe whose held-out queries score ``mean +- spread`` alternately (mean exactly as given)."""
    per_query = {k: [v + spread * (-1) ** i for i in range(n)] for k, v in scores.items()}
    return ScheduleTrial(learning_rate=lr, temperature=0.05, steps=10, scores=scores, per_query=per_query)


BASE = [0.4] * 40  # the base model's per-query held-out scores


def test_the_best_checkpoint_wins_and_a_probe_still_improving_keeps_the_fixed_length():
    cfg = TrainConfig(epochs=3.0, learning_rate=3e-5, schedule={"mode": "auto"})
    early = schedule._pick(cfg, [_trial(5e-5, {"1": 0.50, "2": 0.55, "2.5": 0.52}), _trial(1e-4, {"1": 0.54})],
                           BASE, probe_epochs=2.5)
    assert (early.mode, early.learning_rate, early.epochs) == ("auto", 5e-5, 2.0)
    assert "interval" in early.reason and "the base model" in early.reason  # no probe of the fixed settings
    improving = schedule._pick(cfg, [_trial(5e-5, {"1": 0.5, "1.5": 0.6})], BASE, probe_epochs=1.5)
    assert improving.epochs == 3.0 and "still improving" in improving.reason
    worse = schedule._pick(cfg, [_trial(5e-5, {"1": 0.3})], BASE, probe_epochs=1.0)
    assert (worse.learning_rate, worse.epochs) == (cfg.learning_rate, 3.0) and "base model" in worse.reason


def test_a_probe_replaces_the_fixed_settings_only_on_resolved_evidence():
    """Against the fixed settings' own probe (lr 3e-5, checkpoint nearest 3 epochs): +0.02 on every one of 40
    queries is resolved and adopted; the same mean gain with a +-0.3 swing per query is not, and the fixed
    schedule stays; with confidence 0 the best mean wins as before; the fixed probe itself winning keeps it."""
    cfg = TrainConfig(epochs=3.0, learning_rate=3e-5, schedule={"mode": "auto"})
    fixed_probe = _trial(3e-5, {"1": 0.45, "2": 0.49, "3": 0.50})
    steady = schedule._pick(cfg, [fixed_probe, _trial(6e-5, {"1": 0.48, "2": 0.52})], BASE, probe_epochs=3.0)
    assert (steady.mode, steady.learning_rate, steady.epochs) == ("auto", 6e-5, 2.0)
    assert "+0.0200" in steady.reason and "fixed settings' probe (3 epochs)" in steady.reason
    noisy = schedule._pick(cfg, [fixed_probe, _trial(6e-5, {"1": 0.48, "2": 0.52}, spread=0.3)], BASE, 3.0)
    assert (noisy.learning_rate, noisy.epochs) == (3e-5, 3.0)
    assert "no evidence" in noisy.reason
    loose = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"confidence": 0.0})})
    assert schedule._pick(loose, [fixed_probe, _trial(6e-5, {"2": 0.52}, spread=0.3)], BASE, 3.0).learning_rate == 6e-5
    own = schedule._pick(cfg, [fixed_probe, _trial(6e-5, {"2": 0.47})], BASE, probe_epochs=3.0)
    assert (own.learning_rate, own.epochs) == (3e-5, 3.0) and "own probe" in own.reason


def test_fixed_mode_and_too_few_queries_keep_the_configured_schedule(base_model):
    rows = _rows(10)
    cfg = TrainConfig(**SMALL)
    choice = schedule.choose(".", rows, {}, cfg, base_model, PromptsConfig(), DistContext())
    assert (choice.mode, choice.learning_rate, choice.epochs) == ("fixed", cfg.learning_rate, cfg.epochs)
    auto = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"mode": "auto"})})
    few = schedule.choose(".", rows, {}, auto, base_model, PromptsConfig(), DistContext())
    assert few.learning_rate == cfg.learning_rate and "min_holdout_queries" in few.reason and not few.trials


def test_auto_run_probes_within_its_budget_and_records_the_choice(tmp_path, mined_dir, base_model):
    rows = contracts.read_train_examples(mined_dir)[:48]
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in rows]
    contracts.write_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    cfg = TrainConfig(**SMALL, epochs=1.0, learning_rate=1e-4, schedule={
        "mode": "auto", "folds": 1, "holdout": 0.25, "min_holdout_queries": 4, "budget": 1.5,
        "candidates": [(1.0, 1.0), (0.25, 2.0)]})
    m = train.run(tmp_path / "mined", tmp_path / "model", cfg, base_model=base_model, prompts=PromptsConfig())
    choice = m.result.schedule
    assert choice.heldout_queries >= 4 and len(choice.trials) == 2
    assert all(t.scores and all(0 <= v <= 1 for v in t.scores.values()) for t in choice.trials)
    assert 0 < choice.probe_steps <= 1.5 * choice.fixed_steps + len(choice.trials)  # rounding: one step a probe
    assert choice.base_score is not None and choice.reason and choice.probe_seconds > 0
    won = max(choice.trials, key=lambda t: max(t.scores.values()))
    held = choice.heldout_queries
    assert all(len(v) == held for t in choice.trials for v in t.per_query.values())
    assert '"per_query"' not in (tmp_path / "model" / contracts.MANIFEST).read_text()  # in memory only
    if max(won.scores.values()) <= choice.base_score:  # no probe beat the base model: the fixed schedule
        assert (choice.learning_rate, choice.temperature) == (cfg.learning_rate, cfg.temperature)
        assert "base model" in choice.reason
    elif "interval [+" in choice.reason:  # resolved gain over the fixed settings' probe: the winner's settings
        assert (choice.learning_rate, choice.temperature) == (won.learning_rate, won.temperature)
    else:  # the fixed settings' own probe won, or the winner's gain was not resolved: the fixed schedule
        assert (choice.learning_rate, choice.temperature) == (cfg.learning_rate, cfg.temperature)
        assert "own probe" in choice.reason or "no evidence" in choice.reason
    assert m.config["learning_rate"] == choice.learning_rate and m.config["epochs"] == choice.epochs
    assert known_positives(tmp_path / "mined", rows)  # rows alone (no known_positives.jsonl) still mask their own


def test_folds_hold_every_query_out_once_and_join_their_scores_by_checkpoint():
    rows = _rows(10) + [TrainExample(anchor="query 0", positive="doc 0 bis")]
    folds = schedule.fold_queries(rows, 3, seed=3)
    helds = [held for _, held in folds]
    assert sorted(len(h) for h in helds) == [3, 3, 4] and set().union(*helds) == {r.anchor for r in rows}
    assert all(not kept & held and kept | held == {r.anchor for r in rows} for kept, held in folds)
    assert folds == schedule.fold_queries(rows, 3, seed=3) and folds != schedule.fold_queries(rows, 3, seed=4)
    a = ScheduleTrial(learning_rate=1e-5, temperature=0.05, steps=6, scores={"1": 0.5, "2": 0.6},
                      per_query={"1": [0.4, 0.6], "2": [0.5, 0.7]})
    b = ScheduleTrial(learning_rate=1e-5, temperature=0.05, steps=4, scores={"1": 0.2, "1.9": 0.3, "2.5": 0.9},
                      per_query={"1": [0.2], "1.9": [0.3], "2.5": [0.9]})  # a fold with an extra checkpoint
    (joined,) = schedule.join_folds([[a], [b]])
    assert joined.per_query == {"1": [0.4, 0.6, 0.2], "2": [0.5, 0.7, 0.3]} and joined.steps == 10
    assert joined.scores == {"1": 0.4, "2": 0.5}


def test_auto_run_with_folds_scores_every_train_query(tmp_path, mined_dir, base_model):
    rows = contracts.read_train_examples(mined_dir)[:32]
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in rows]
    contracts.write_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    cfg = TrainConfig(**SMALL, epochs=1.0, learning_rate=1e-4, schedule={
        "mode": "auto", "folds": 2, "min_holdout_queries": 4, "budget": 2.0, "candidates": [(1.0, 1.0), (0.25, 1.0)]})
    choice = train.run(tmp_path / "mined", tmp_path / "model", cfg, base_model=base_model,
                       prompts=PromptsConfig()).result.schedule
    queries = len({r.anchor for r in rows})
    assert choice.heldout_queries == queries and len(choice.trials) == 2
    assert all(len(v) == queries for t in choice.trials for v in t.per_query.values())
    assert 0 < choice.probe_steps <= 2.0 * choice.fixed_steps + 2 * len(choice.trials)


def test_augmentation_rows_win_only_on_evidence_against_the_fixed_settings_without_them():
    """Probes with the augmentation rows are compared like any other against the fixed settings' probe WITHOUT
    them (never the reference themselves): a resolved gain adopts them, the same settings' rows alone stay the
    reference, and ``rows_for`` drops them unless the choice kept them."""
    cfg = TrainConfig(epochs=3.0, learning_rate=3e-5, schedule={"mode": "auto"})
    plain = _trial(3e-5, {"1": 0.45, "2": 0.49, "3": 0.50})
    augmented = _trial(3e-5, {"1": 0.47, "2": 0.50, "3": 0.52}).model_copy(update={"augment": True})
    won = schedule._pick(cfg, [plain, augmented], BASE, probe_epochs=3.0)
    assert (won.mode, won.augment, won.learning_rate, won.epochs) == ("auto", True, 3e-5, 3.0)
    assert "with the augmentation rows" in won.reason and "fixed settings' probe (3 epochs)" in won.reason
    kept = schedule._pick(cfg, [plain, _trial(3e-5, {"3": 0.49}).model_copy(update={"augment": True})], BASE, 3.0)
    assert not kept.augment and "own probe" in kept.reason
    rows = _rows(4) + [TrainExample(anchor="generated", positive="doc 9", augment=True)]
    assert schedule.rows_for(rows, won) == rows and schedule.rows_for(rows, kept) == rows[:4]


def test_augmentation_rows_are_probed_beside_the_users_and_never_held_out(tmp_path, mined_dir, base_model):
    rows = contracts.read_train_examples(mined_dir)
    user = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in rows[:24]]
    extra = [r.model_copy(update={"negatives": [], "augment": True}) for r in rows[24:40]
             if r.anchor not in {u.anchor for u in user}]
    assert extra
    contracts.write_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in user + extra))
    auto = TrainConfig(**SMALL, epochs=1.0, learning_rate=1e-4, schedule={
        "mode": "auto", "folds": 2, "min_holdout_queries": 4, "budget": 1.0, "candidates": [(1.0, 1.0)]})
    m = train.run(tmp_path / "mined", tmp_path / "model", auto, base_model=base_model, prompts=PromptsConfig())
    choice = m.result.schedule
    queries = len({r.anchor for r in user})
    assert choice.heldout_queries == queries  # the user's queries only
    assert all(len(v) == queries for t in choice.trials for v in t.per_query.values())
    assert [t.augment for t in choice.trials] == [False, True] and choice.trials[1].steps > choice.trials[0].steps
    assert m.counts["augment_rows"] == (len(extra) if choice.augment else 0)
    assert m.counts["examples"] == len(user) + m.counts["augment_rows"]
    fixed = train.run(tmp_path / "mined", tmp_path / "fixed", TrainConfig(**SMALL, epochs=1.0), base_model=base_model,
                      prompts=PromptsConfig())
    assert fixed.result.schedule.augment and fixed.counts["augment_rows"] == len(extra)  # fixed: every row


def test_a_probe_measures_the_run_it_stands_for_lora_and_wise_ft_included(tmp_path, mined_dir, base_model):
    """A probe builds, trains and scores the model as the final run builds, trains and saves it: with LoRA adapters
    and WiSE-FT, its last checkpoint scores exactly what the saved model of a run with its settings scores (before
    the probes were built by ``prepare_model``, they trained every weight whatever ``train.lora`` said)."""
    from sentence_transformers import SentenceTransformer

    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in contracts.read_train_examples(mined_dir)[:16]]
    contracts.write_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    known = known_positives(tmp_path / "mined", rows)
    held = schedule.held_out_set(rows, {r.anchor for r in rows}, known, max_pool=100, seed=7)
    lora = TrainConfig(**SMALL, epochs=1.0, learning_rate=1e-3, base_weight=0.3, lora={"enabled": True, "r": 4})

    def probe(cfg: TrainConfig) -> ScheduleTrial:
        return schedule._train_probe(rows, known, held, cfg, base_model, PromptsConfig(), None, DistContext(),
                                     base_weight=cfg.base_weight, score_base=False)[0]

    trial = probe(lora)
    assert list(trial.per_query) == ["1"] and trial.steps == 4
    train.run(tmp_path / "mined", tmp_path / "model", lora, base_model=base_model, prompts=PromptsConfig())
    saved = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    saved.max_seq_length = SMALL["max_seq_length"]
    assert schedule.per_query(saved, held) == trial.per_query["1"]
    full = probe(lora.model_copy(update={"lora": lora.lora.model_copy(update={"enabled": False})}))
    assert full.per_query["1"] != trial.per_query["1"]  # every weight trained: another model


def test_the_rule_reproduces_every_choice_of_a_recorded_gpu_sweep():
    """Sweep 26 (H200, docs/benchmarks.md, issue #13 seventh round) recorded every probe's per-query held-out scores
    and what each run chose; ``_pick`` on those scores (bench/replay_choice.py) chooses the same learning rate,
    temperature, epochs and augmentation rows in all 15 runs (arguana: the augmented lr 5e-5 probe; cranfield,
    dbpedia-many: mostly the fixed schedule) — the rule as shipped is the rule those numbers measured."""
    import json
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from replay_choice import shipped_choice

    runs = 0
    for path in sorted((REPO / "docs" / "data").glob("dev_collections_h200_2026-12-05_s26_*.jsonl")):
        for row in map(json.loads, path.read_text().splitlines()):
            if not row.get("trials"):
                continue
            got, want = shipped_choice(row), row["chosen"]
            assert (got.learning_rate, got.temperature, got.epochs, got.augment) == (
                want["learning_rate"], want["temperature"], want["epochs"], want["augment"]), (path.name, row["seed"])
            runs += 1
    assert runs == 15

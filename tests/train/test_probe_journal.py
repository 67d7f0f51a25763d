"""The schedule search's probe journal: a search killed part-way (SIGKILL, as a preempted pod) and run again trains
only the probes it had not finished and chooses exactly what an uninterrupted search chooses; the journal is keyed by
what the probes depend on, a busy one is searched without, and a successful step removes it."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import sigkill_when

from embedforge import contracts
from embedforge.config import PromptsConfig, TrainConfig
from embedforge.contracts.positives import known_positives
from embedforge.stages import train
from embedforge.stages.train import probe_journal, schedule, work
from embedforge.stages.train.distributed import DistContext

SEARCH = {"batch_size": 4, "max_seq_length": 32, "warmup_ratio": 0.0, "seed": 7, "device": "cpu", "epochs": 1.0,
          "learning_rate": 1e-4, "schedule": {"mode": "auto", "folds": 2, "min_holdout_queries": 4, "budget": 2.0,
                                              "candidates": [(1.0, 1.0), (0.25, 1.0), (2.0, 1.0)]}}

# Runs one search in its own process, as a train step would (the test kills it part-way).
_SEARCH_SCRIPT = textwrap.dedent("""
    import json, sys
    from embedforge import contracts
    from embedforge.config import PromptsConfig, TrainConfig
    from embedforge.stages.train import schedule
    from embedforge.stages.train.distributed import DistContext
    from embedforge.contracts.positives import known_positives
    mined, cfg, base_model = sys.argv[1], TrainConfig.model_validate_json(sys.argv[2]), sys.argv[3]
    rows = contracts.read_train_examples(mined)
    schedule.choose(mined, rows, known_positives(mined, rows), cfg, base_model, PromptsConfig(), DistContext())
""")


@pytest.fixture
def search_rows(tmp_path, mined_dir):
    rows = [r.model_copy(update={"negatives": r.negatives[:1]}) for r in contracts.read_train_examples(mined_dir)[:32]]
    contracts.write_jsonl(tmp_path / "mined" / contracts.TRAIN_FILE, (r.to_columns() for r in rows))
    return tmp_path / "mined", rows


def _cfg(work_dir: Path) -> TrainConfig:
    cfg = TrainConfig.model_validate(SEARCH)
    return cfg.model_copy(update={"work_dir": str(work_dir)})


def _choose(mined: Path, rows, cfg: TrainConfig, base_model: str):
    return schedule.choose(mined, rows, known_positives(mined, rows), cfg, base_model, PromptsConfig(), DistContext())


def _results(root: Path) -> list[dict]:
    files = list(root.glob("*/results.jsonl"))
    assert len(files) <= 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()] if files else []


def test_a_search_killed_part_way_resumes_its_probes_and_chooses_as_an_uninterrupted_one(tmp_path, search_rows,
                                                                                          base_model):
    mined, rows = search_rows
    reference = _choose(mined, rows, _cfg(tmp_path / "reference"), base_model)
    units = 2 * 3  # folds x candidates
    assert len(_results(tmp_path / "reference")) == units and reference.reused_probes == 0

    cfg = _cfg(tmp_path / "journal")
    stderr = sigkill_when([sys.executable, "-c", _SEARCH_SCRIPT, str(mined), cfg.model_dump_json(), base_model],
                          lambda: len(_results(tmp_path / "journal")) >= 2)
    finished = len(_results(tmp_path / "journal"))
    assert 2 <= finished < units, f"the search should have been killed part-way ({finished} probes): {stderr[-2000:]}"

    resumed = _choose(mined, rows, cfg, base_model)
    assert resumed.reused_probes == finished and resumed.journal
    assert len(_results(tmp_path / "journal")) == units  # the missing probes were trained and recorded, none twice
    assert [t.per_query for t in resumed.trials] == [t.per_query for t in reference.trials]
    assert (resumed.learning_rate, resumed.temperature, resumed.epochs, resumed.augment, resumed.reason) == (
        reference.learning_rate, reference.temperature, reference.epochs, reference.augment, reference.reason)
    again = _choose(mined, rows, cfg, base_model)  # nothing left to train
    assert again.reused_probes == units and again.trials == resumed.trials


def test_the_journal_is_keyed_by_what_a_probe_depends_on(tmp_path, search_rows, base_model):
    mined, rows = search_rows
    known = known_positives(mined, rows)
    cfg = TrainConfig.model_validate(SEARCH)

    def ident(rows=rows, cfg=cfg, base_model=base_model, base_weight=0.0):
        return work.identity(rows, known, cfg, base_model, PromptsConfig(), None, base_weight, 1)

    copy = Path(shutil.copytree(base_model, tmp_path / "staged" / "base_model"))  # a retry stages it elsewhere
    elsewhere = cfg.model_copy(update={"work_dir": str(tmp_path), "checkpoint_minutes": 1.0})
    assert ident() == ident(base_model=str(copy)) == ident(cfg=elsewhere)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert ident(base_model=str(copy)) != ident()  # other weights or settings in the folder: other probes
    assert ident(rows=rows[:-1]) != ident()
    assert ident(cfg=cfg.model_copy(update={"temperature": 0.07})) != ident()
    assert ident(base_weight=0.5) != ident()


def test_a_journal_another_search_holds_is_left_alone(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    state = {"search": 1}
    with probe_journal.opened(state, cfg, DistContext()) as first:
        assert first.folder is not None and first.folder.parent == tmp_path
        with probe_journal.opened(state, cfg, DistContext()) as second:
            assert second.folder is None and second.store is None  # searched without: nothing written, nothing read
        assert "searching without a journal" in caplog.text and "train.work_dir" in caplog.text
        first.put("fold0/user/lr1/t1/epochs1", contracts.ScheduleTrial(
            learning_rate=1e-4, temperature=0.05, steps=4, scores={"1": 0.5}, per_query={"1": [0.5]}), [0.4])
    with probe_journal.opened(state, cfg, DistContext()) as reopened:
        trial, base = reopened.get("fold0/user/lr1/t1/epochs1")
        assert (trial.per_query, base, reopened.reused) == ({"1": [0.5]}, [0.4], 1)
        assert reopened.get("fold1/user/lr1/t1/epochs1") is None


def test_a_successful_train_step_removes_its_journal_and_records_it(tmp_path, search_rows, base_model):
    mined, _ = search_rows
    m = train.run(mined, tmp_path / "model", _cfg(tmp_path / "journal"), base_model=base_model,
                  prompts=PromptsConfig())
    choice = m.result.schedule
    assert choice.journal and Path(choice.journal).parent == tmp_path / "journal"
    assert not Path(choice.journal).exists() and choice.reused_probes == 0


def test_a_damaged_journal_is_started_again(tmp_path, caplog):
    cfg, state = _cfg(tmp_path), {"search": 2}
    trial = contracts.ScheduleTrial(learning_rate=1e-4, temperature=0.05, steps=4, scores={"1": 0.5},
                                    per_query={"1": [0.5]})
    with probe_journal.opened(state, cfg, DistContext()) as journal:
        journal.put("a", trial, [0.4])
        journal.put("b", trial, [])
        folder = journal.folder
    lines = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text(lines[0][:20] + "\n" + lines[1] + "\n")  # a damaged middle record
    with probe_journal.opened(state, cfg, DistContext()) as again:
        assert again.folder == folder and again.done == {}  # nothing trusted from it, the search starts over
    assert "corrupt record" in caplog.text and "starting the probe journal again" in caplog.text

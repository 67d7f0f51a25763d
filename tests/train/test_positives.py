"""Many positives per query: per-epoch sampling of a query's positives, and in-batch masking of every text mining
found positive for it (all grades) — on real mining output (real model, FAISS)."""

from __future__ import annotations

from collections import Counter

from embedforge import contracts
from embedforge.config import MineConfig
from embedforge.contracts import Pair, TrainExample
from embedforge.contracts.positives import KNOWN_POSITIVES_FILE, known_positives
from embedforge.stages import mine
from embedforge.stages.train.batching import (
    collate,
    epoch_batches,
    no_duplicate_batches,
    plan_steps,
)
from embedforge.stages.train.positives import epoch_rows


def _many_positive_rows() -> list[TrainExample]:
    """One query with 30 positives, nine queries with one each."""
    rows = [TrainExample(anchor="big", positive=f"big doc {i}", negatives=[f"neg {i}"]) for i in range(30)]
    rows += [TrainExample(anchor=f"q{i}", positive=f"doc {i}", negatives=["neg x"]) for i in range(9)]
    return rows


def test_each_epoch_takes_a_capped_window_of_a_querys_positives_and_cycles_through_all_of_them():
    rows = _many_positive_rows()
    epochs = [epoch_rows(rows, cap=8, seed=13, epoch=e) for e in range(4)]
    for chosen in epochs:
        per_anchor = Counter(rows[i].anchor for i in chosen)
        assert per_anchor["big"] == 8 and all(per_anchor[f"q{i}"] == 1 for i in range(9))
    big = [{i for i in chosen if rows[i].anchor == "big"} for chosen in epochs]
    assert not big[0] & big[1] and not big[1] & big[2]  # no positive again before the cycle is through
    assert set().union(*big) == set(range(30))  # four epochs of 8 cover all 30 positives
    assert epochs == [epoch_rows(rows, cap=8, seed=13, epoch=e) for e in range(4)]  # seeded
    assert epochs[0] != epoch_rows(rows, cap=8, seed=14, epoch=0)
    assert epoch_rows(rows, cap=0, seed=13, epoch=0) == list(range(len(rows)))  # 0: every row


def test_the_plan_steps_through_sampled_epochs():
    """Steps per epoch follow the sampled rows (17 of 39 here: 8 of the big query's), not every row, and the big
    query's rows left over once the other queries are used up end the epoch rather than train one per step."""
    rows = _many_positive_rows()
    per_epoch = epoch_batches(rows, 4, seed=13, positives_per_query=8, epoch=0)
    big_per_batch = [sum(rows[i].anchor == "big" for i in b) for b in per_epoch]
    assert big_per_batch == [1] * len(per_epoch) and sum(len(b) for b in per_epoch) == 9 + len(per_epoch)
    plan = plan_steps(rows, 4, 2.0, seed=13, positives_per_query=8)
    assert len(plan) == 2 * len(per_epoch)
    trained = [rows[i].positive for b in plan for i in b if rows[i].anchor == "big"]
    assert len(trained) == len(set(trained)) == len(plan)  # each epoch a different window of the big query's
    uncapped = plan_steps(rows, 4, 1.0, seed=13, positives_per_query=0)  # no cap: every row is eligible
    trained = [i for b in uncapped for i in b]
    assert len(trained) == len(set(trained)) and {f"q{i}" for i in range(9)} <= {rows[i].anchor for i in trained}
    # once only the big query's rows are left, the epoch ends instead of stepping them one at a time
    assert all(len(b) >= 2 for b in uncapped) and len(uncapped) < 12
    every_row = no_duplicate_batches(rows, 4, seed=13, min_fill=0)
    assert sorted(i for b in every_row for i in b) == list(range(39)) and len(every_row) >= 30


LOOP_QUERY = "How do I leave a loop early?"


def _mine_graded_loop_pairs(tmp_path, chunks_dir, base_model, top_grade: int, train_grades: str) -> list[TrainExample]:
    """Mine two real pairs: the loop query with break.rst at ``top_grade`` and continue.rst at grade 1, and a query
    whose only positive is continue.rst; returns the mined rows."""
    pairs = [Pair(query_id="loop", query=LOOP_QUERY, positive_doc_ids=["break.rst", "continue.rst"],
                  positive_grades={"break.rst": top_grade, "continue.rst": 1}, relevance="document", split="train"),
             Pair(query_id="skip", query="How do I skip to the next iteration?", positive_doc_ids=["continue.rst"],
                  relevance="document", split="train")]
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, pairs)
    mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", MineConfig(train_grades=train_grades),
             base_model=base_model)
    return contracts.read_train_examples(tmp_path / "mined")


def test_lower_grades_are_masked_in_batch_never_trained_or_mined(tmp_path, chunks_dir, base_model):
    """A graded pair: its grade-2 document trains, its grade-1 document is no row and no mined negative, and when
    the grade-1 text shows up in a batch (another query's positive) it is masked for this query."""
    chunks = contracts.read_chunks(chunks_dir)
    lower = {c.text for c in chunks if c.doc_id == "continue.rst"}
    query = LOOP_QUERY
    rows = _mine_graded_loop_pairs(tmp_path, chunks_dir, base_model, 2, "top")
    assert (tmp_path / "mined" / KNOWN_POSITIVES_FILE).is_file()
    ours = [r for r in rows if r.anchor == query]
    assert ours and not {r.positive for r in ours} & lower and not {n for r in ours for n in r.negatives} & lower

    known = known_positives(tmp_path / "mined", rows)
    assert lower <= known[query]
    i_ours, i_other = rows.index(ours[0]), next(i for i, r in enumerate(rows) if r.anchor != query)
    batch = collate(rows, [i_ours, i_other], known)
    assert rows[i_other].positive in lower
    assert bool(batch.mask[0, 1])  # the other row's positive is a lower-grade positive of ours: not a negative
    assert not bool(batch.mask[1, 0])  # the top-grade text is a negative of the other query as usual
    without_file = collate(rows, [i_ours, i_other], {r.anchor: {r.positive} for r in rows})
    assert not bool(without_file.mask[0, 1])  # the rows alone do not know it: today's mask pushed it away


def test_mining_keeps_every_positive_of_a_many_positive_query(tmp_path, chunks_dir, base_model):
    """Rows for all (top-grade) positives, not the first ten; training samples them per epoch."""
    chunks = contracts.read_chunks(chunks_dir)
    ids = [c.chunk_id for c in chunks[:14]]
    texts = {c.text for c in chunks[:14]}
    pair = Pair(query_id="many", query="What does Python do with this code?", positive_chunk_ids=ids, split="train")
    contracts.write_jsonl(tmp_path / "pairs" / contracts.PAIRS_FILE, [pair])
    mine.run(chunks_dir, tmp_path / "pairs", tmp_path / "mined", MineConfig(), base_model=base_model)
    rows = contracts.read_train_examples(tmp_path / "mined")
    assert {r.positive for r in rows} == texts and len(rows) == len(texts) > 10


def test_graded_rows_carry_their_grade_and_weigh_by_it_in_the_batch_loss(tmp_path, chunks_dir, base_model):
    """train_grades=all on a graded pair: each row keeps its positive's grade (a ``grade`` column only above 1), and
    with grade_power p a batch's loss is the grade^p-weighted mean of its rows' losses; p 0 or one grade: the mean."""
    import json

    import torch
    import torch.nn.functional as F

    from embedforge.stages.train.losses import InfoNCELoss

    chunks = {c.doc_id: c.text for c in contracts.read_chunks(chunks_dir)}
    query = LOOP_QUERY
    rows = _mine_graded_loop_pairs(tmp_path, chunks_dir, base_model, 3, "all")
    grade_of = {(r.anchor, r.positive): r.grade for r in rows}
    assert grade_of[(query, chunks["break.rst"])] == 3 and grade_of[(query, chunks["continue.rst"])] == 1
    assert all(r.grade == 1 for r in rows if r.anchor != query)
    raw = [json.loads(line) for line in (tmp_path / "mined" / contracts.TRAIN_FILE).read_text().splitlines()]
    assert sorted(r.get("grade", 1) for r in raw if r["anchor"] == query) == [1, 3]
    assert all("grade" not in r for r in raw if r.get("grade", 1) == 1)  # ungraded rows: the columns ST reads

    top = next(i for i, r in enumerate(rows) if r.grade == 3)
    other = next(i for i, r in enumerate(rows) if r.anchor != query)
    batch = collate(rows, [top, other], None)
    torch.testing.assert_close(batch.weights(1.0), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(batch.weights(2.0), torch.tensor([9.0, 1.0]))
    assert batch.weights(0.0) is None and collate(rows, [other], None).weights(1.0) is None

    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g), torch.randn(3, 16, generator=g))
    loss_fn = InfoNCELoss(temperature=0.05)
    per_row = F.cross_entropy(loss_fn.logits(a, p, n), torch.arange(2), reduction="none")
    torch.testing.assert_close(loss_fn(a, p, n, weights=batch.weights(1.0)), (3 * per_row[0] + per_row[1]) / 4)
    torch.testing.assert_close(loss_fn(a, p, n, weights=torch.ones(2)), loss_fn(a, p, n))
    sym = InfoNCELoss(temperature=0.05, symmetric=True)  # both directions' row losses carry the row's weight
    rev = F.cross_entropy(sym.logits(a, p, n)[:, :2].T, torch.arange(2), reduction="none")
    torch.testing.assert_close(sym(a, p, n, weights=batch.weights(1.0)),
                               (3 * (per_row[0] + rev[0]) / 2 + (per_row[1] + rev[1]) / 2) / 4)

"""Run report: the paired bootstrap, the HTML built from real stage artifacts (real evaluate, validate, train,
MLflow register and gate on the shared tiny-corpus artifacts), the KFP component attaching it to the MLflow run,
and the page rendered by a real browser (Debian's headless Chromium through selenium)."""

from __future__ import annotations

import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from embedforge.contracts import (
    Decision,
    EvaluationResult,
    TrainResult,
    read_per_query,
    read_result,
)
from embedforge.retrieval import stats
from embedforge.stages import report

pytest_plugins = ["conftest_mlflow"]


# ------------------------------------------------------------------------------------------------ bootstrap
def test_a_known_difference_lies_in_the_interval():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, size=300)
    finetuned = base + 0.05 + rng.normal(0, 0.1, size=300)
    iv = stats.paired_bootstrap(base, finetuned)
    assert iv.low < 0.05 < iv.high and iv.low > 0  # contains the true gain, excludes "no gain"
    assert iv.mean == pytest.approx(float(np.mean(finetuned - base)))
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(300), rel=0.25)  # ~ the normal-theory width


def test_identical_runs_give_an_interval_at_zero_and_noise_one_around_zero():
    scores = np.random.default_rng(2).uniform(size=50)
    assert stats.paired_bootstrap(scores, scores) == stats.Interval(0.0, 0.0, 0.0)
    rng = np.random.default_rng(3)
    base = rng.uniform(size=400)
    iv = stats.paired_bootstrap(base, base + rng.choice([-0.1, 0.1], size=400))
    assert iv.low < 0 < iv.high
    assert stats.paired_bootstrap(base, base + 0.01, seed=5) == stats.paired_bootstrap(base, base + 0.01, seed=5)
    with pytest.raises(ValueError, match="non-empty"):
        stats.paired_bootstrap([], [])


# ------------------------------------------------------------------------------------------------ real artifacts
class _Cells(HTMLParser):
    """Text of every table cell, per table class, and the SVGs' element counts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.svg: dict[str, int] = {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag in ("rect", "path", "circle", "line"):
            self.svg[tag] = self.svg.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_report_from_real_artifacts_shows_every_section(tmp_path, run_artifacts):
    path = report.write_report(run_artifacts, tmp_path / report.REPORT_FILE)
    text = path.read_text(encoding="utf-8")
    ev = read_result(run_artifacts["evaluate"], EvaluationResult)
    per_query = read_per_query(run_artifacts["evaluate"])
    decision = read_result(run_artifacts["gate"], Decision)
    train = read_result(run_artifacts["train"], TrainResult)
    cells = _Cells()
    cells.feed(text)

    # metrics: evaluation.json's means, the gain, an interval around it, wins+ties+losses = queries
    metrics = {row[0]: row for row in cells.tables["metrics"][1:]}
    assert set(metrics) == set(ev.finetuned)
    for name, row in metrics.items():
        n, b, f, gain, ci, wins, ties, losses = row[1:]
        assert int(n) == len(per_query) == int(wins) + int(ties) + int(losses)
        assert float(b) == pytest.approx(ev.base[name], abs=1e-4) and float(f) == pytest.approx(ev.finetuned[name], abs=1e-4)
        low, high = map(float, re.findall(r"[-+]\d\.\d+", ci))
        assert low <= float(gain) <= high
    primary = ev.primary_metric
    gains = [r.finetuned[primary] - r.base[primary] for r in per_query]
    assert int(metrics[primary][6]) == sum(g > stats.TIE for g in gains)

    # gate, loss curve, validation, per-type, top queries
    assert decision.reason in text.replace("&#x27;", "'")
    gate_rows = {row[0]: row[1] for row in cells.tables["gate"][1:]}
    iv = decision.vs_base  # the default rule decided on evaluate's per-query records
    assert gate_rows["rule"] == decision.rule == "interval" and iv.n == len(per_query)
    assert gate_rows["95% interval of the gain over base"] == f"[{iv.low:+.4f}, {iv.high:+.4f}] over {iv.n} queries"
    loss_path = re.search(r'<path class="loss" d="([^"]+)"', text).group(1)
    assert loss_path.count("L") == len(train.loss_history) - 1 >= 1
    checks = cells.tables["validation"][1:]
    assert checks and all(row[1] == "ok" for row in checks)
    by_source = {row[0]: int(row[1]) for row in cells.tables["per-type"][1:]}
    assert sum(by_source.values()) == len(per_query) and "offline/title" in by_source
    best = max(per_query, key=lambda r: r.finetuned[primary] - r.base[primary])
    if best.finetuned[primary] - best.base[primary] > stats.TIE:
        row = cells.tables["queries improved"][1]
        assert row[0].startswith(best.query[:40])
        assert best.finetuned_ranking[0].id in row[3]
    assert 'src="http' not in text and "<script" not in text  # self-contained


def test_a_failed_run_writes_a_partial_report(tmp_path, chunks_dir, run_artifacts):
    path = report.write_report({"ingest": chunks_dir, "validate": run_artifacts["validate"], "train": None},
                               tmp_path / "report.html", status="failed", error="stage train failed: OutOfMemory")
    text = path.read_text(encoding="utf-8")
    assert 'id="run-status">failed<' in text and "stage train failed: OutOfMemory" in text
    assert "the train stage did not run or did not finish" in text
    assert "the gate stage did not run" in text and 'id="validation-status">passed<' in text


def test_query_types_of_llm_pairs_get_their_own_table(run_artifacts):
    recs = read_per_query(run_artifacts["evaluate"])
    for i, r in enumerate(recs):
        r.query_type = ("multi_hop", "structural")[i % 2]
    html = report.render_report(report.ReportInputs(evaluation=read_result(run_artifacts["evaluate"],
                                                                             EvaluationResult), per_query=recs))
    cells = _Cells()
    cells.feed(html)
    rows = {row[0]: int(row[1]) for row in cells.tables["per-type"][1:]}
    assert rows == {"multi_hop": (len(recs) + 1) // 2, "structural": len(recs) // 2}


def test_matryoshka_dimensions_get_their_own_table():
    """evaluation.json's by_dimension: the primary metric of both models at each width, and the share of the full
    width's fine-tuned score each keeps; no table for a model trained without Matryoshka dimensions."""
    base, fine = {"ndcg@10": 0.37, "recall@10": 0.43}, {"ndcg@10": 0.4, "recall@10": 0.47}
    ev = EvaluationResult(primary_metric="ndcg@10", base=base, finetuned=fine, delta={}, by_dimension={
        384: {"base": base, "finetuned": fine}, 96: {"base": {"ndcg@10": 0.25}, "finetuned": {"ndcg@10": 0.39}}})
    cells = _Cells()
    cells.feed(report.render_report(report.ReportInputs(evaluation=ev)))
    assert cells.tables["dimensions"] == [["dimensions", "base", "fine-tuned", "of full fine-tuned"],
                                          ["384", "0.3700", "0.4000", "100.0 %"],
                                          ["96", "0.2500", "0.3900", "97.5 %"]]
    plain = _Cells()
    plain.feed(report.render_report(report.ReportInputs(evaluation=ev.model_copy(update={"by_dimension": {}}))))
    assert "dimensions" not in plain.tables and "metrics" in plain.tables


# ------------------------------------------------------------------------------------------------ component
def test_component_writes_the_kfp_html_and_attaches_it_to_the_mlflow_run(tmp_path, run_artifacts, mlflow_uri):
    from embedforge.components.report.component import report as component
    from kfp import dsl
    from mlflow import MlflowClient

    from embedforge.contracts import RegistryRecord

    html = dsl.HTML(uri=str(tmp_path / "html"))
    a = run_artifacts
    component.python_func(
        chunks=dsl.Dataset(uri=str(a["ingest"])), validation=dsl.Artifact(uri=str(a["validate"])),
        model=dsl.Model(uri=str(a["train"])), evaluation=dsl.Artifact(uri=str(a["evaluate"])),
        registry=dsl.Artifact(uri=str(a["register"])), decision=dsl.Artifact(uri=str(a["gate"])),
        tracking_uri=mlflow_uri, html=html,
    )
    run_id = read_result(a["register"], RegistryRecord).run_id
    assert html.metadata["mlflow_run_id"] == run_id
    local = Path(html.path).read_text(encoding="utf-8")
    assert "Gate decision" in local
    with tempfile.TemporaryDirectory() as tmp:
        got = MlflowClient(mlflow_uri).download_artifacts(run_id, f"report/{report.REPORT_FILE}", tmp)
        assert Path(got).read_text(encoding="utf-8") == local


# ------------------------------------------------------------------------------------------------ browser
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def test_the_report_renders_in_headless_chromium(tmp_path, run_artifacts):
    require(CHROMIUM is not None and CHROMEDRIVER is not None, "Debian's chromium + chromium-driver",
            "apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras")
    from selenium.webdriver.common.by import By

    path = report.write_report(run_artifacts, tmp_path / report.REPORT_FILE)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,3000",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(path.as_uri())
        assert driver.title.startswith("embedforge run report")
        assert driver.save_screenshot(str(tmp_path / "report.png")) and (tmp_path / "report.png").stat().st_size > 10_000

        def boxes(selector: str) -> list[dict]:
            return driver.execute_script(
                "return [...document.querySelectorAll(arguments[0])].map(e => e.getBoundingClientRect())"
                ".map(r => ({w: r.width, h: r.height}))", selector)

        bars = boxes("svg.bars rect.bar.finetuned")
        assert bars and any(b["w"] > 1 and b["h"] > 1 for b in bars)  # the fine-tuned bars are drawn
        assert any(b["w"] > 1 for b in boxes("svg.intervals line.ci")) or boxes("svg.intervals circle.mean")
        assert any(b["h"] > 1 for b in boxes("svg.histogram rect.bin"))
        length = driver.execute_script("return document.querySelector('svg.loss path.loss').getTotalLength()")
        n_points = len(read_result(run_artifacts["train"], TrainResult).loss_history)
        assert length > 10 and len(driver.find_elements(By.CSS_SELECTOR, "svg.loss circle.point")) == n_points
        ev = read_result(run_artifacts["evaluate"], EvaluationResult)
        row = driver.find_element(By.XPATH, f"//table[@class='metrics']//tr[td[1]='{ev.primary_metric}']")
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        assert float(cells[3]) == pytest.approx(ev.finetuned[ev.primary_metric], abs=1e-4)
        assert driver.find_element(By.ID, "gate-reason").text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------------------ runner
def test_a_run_that_fails_early_still_writes_its_report(tmp_path, tiny_corpus):
    """The real CLI: bad pairs stop the run at sdg; <out>/report.html shows the failure and what exists."""
    import json
    import os
    import subprocess
    import sys

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "what does assert do", "positive_ids": ["assert.rst"]}\n{"query": oops}\n')
    out = tmp_path / "o"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "run", "--corpus", str(tiny_corpus), "--pairs",
                        str(pairs), "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["report"] == str((out / "latest" / report.REPORT_FILE).resolve())
    text = (out / "latest" / report.REPORT_FILE).read_text(encoding="utf-8")
    assert 'id="run-status">failed<' in text and f"{pairs.name}:2" in text  # the stage's own error
    assert "the evaluate stage did not run or did not finish" in text


def test_the_training_section_shows_what_the_auto_schedule_tried_and_trained_with(tmp_path, chunks_dir,
                                                                                    auto_trained):
    """A real ``train.schedule=auto`` run: the report names the settings trained with and the reason, what the
    search cost, and one row per probe with its held-out nDCG@10 per checkpoint, the settings trained with marked."""
    choice = read_result(auto_trained, TrainResult).schedule
    text = report.write_report({"ingest": chunks_dir, "train": auto_trained}, tmp_path / "r.html").read_text()
    cells = _Cells()
    cells.feed(text)
    table = cells.tables["schedule"][1:]
    assert [(float(r[1]), r[3], int(r[4])) for r in table] == [(t.learning_rate, "no", t.steps) for t in choice.trials]
    for row, trial in zip(table, choice.trials):
        assert row[5] == " · ".join(f"{k}: {v:.4f}" for k, v in trial.scores.items())
    marked = [float(r[1]) for r in table if r[0]]
    assert marked == [choice.learning_rate]  # the probe of the settings the run trained with
    assert f"{choice.probe_steps} probe steps" in text and f"{choice.heldout_queries} held-out" in text
    assert f"learning rate {choice.learning_rate:.2e}" in text
    assert choice.reason.split(";")[0].replace("'", "&#x27;") in text

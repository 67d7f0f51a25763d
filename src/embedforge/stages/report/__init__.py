"""Run report: one self-contained ``report.html`` that says what a run did and whether the model got better.

Sections: the run's status (and error), the gate's decision, its rule and intervals and why, base vs fine-tuned metrics with paired
bootstrap confidence intervals over the eval queries and per-query wins/ties/losses, the distribution of
per-query gains, results per query type (LLM pairs' ``meta.query_type`` / ``meta.reasoning_type``; the pair
source otherwise), the training-loss curve and schedule (with ``train.schedule=auto``: what the search cost and
each probe's held-out scores), the most improved and most regressed queries with both models' rankings (ids,
scores, texts; relevant hits marked), and the data-validation checks.

Everything is inline (CSS and SVG, no script, no external resource), so the file opens offline, in MLflow's
artifact viewer and in the KFP UI. :func:`render_report` is a pure function of :class:`ReportInputs`;
:func:`load_inputs` reads them from stage artifacts through :mod:`embedforge.contracts` only, and a section
whose artifact is missing (a failed run) says so instead of failing the report; :func:`write_report` does both.

Confidence intervals: a paired bootstrap over queries — resample the queries with replacement, average the
per-query difference (fine-tuned minus base) — :data:`BOOTSTRAP_RESAMPLES` times; the interval is the
percentile interval of those means. Pairing removes the between-query variance both models share.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedforge.contracts import (
    Decision,
    EvaluationResult,
    GainInterval,
    PromotionRecord,
    QueryEvaluation,
    RegistryRecord,
    ScheduleChoice,
    ScheduleTrial,
    TrainResult,
    ValidationReport,
    atomic_write_text,
    read_chunks,
    read_per_query,
    read_result,
    read_validation_report,
)
from embedforge.errors import InputError

log = logging.getLogger(__name__)

from embedforge.retrieval.stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    TIE,
    Comparison,
    Interval,
    compare,
)
from embedforge.stages.report.svg import (
    _e,
    histogram,
    interval_plot,
    loss_curve,
    metric_bars,
)

REPORT_FILE = "report.html"
#: How many most-improved / most-regressed queries the report shows, and how many hits of each ranking.
TOP_QUERIES = 5
TOP_HITS = 5
SNIPPET = 200


# ------------------------------------------------------------------------------------------------ inputs
@dataclass
class ReportInputs:
    """What the report shows; any part may be missing (a failed run), ``missing`` says why."""

    status: str = "succeeded"
    error: str | None = None
    evaluation: EvaluationResult | None = None
    per_query: list[QueryEvaluation] = field(default_factory=list)
    train: TrainResult | None = None
    validation: ValidationReport | None = None
    registry: RegistryRecord | None = None
    decision: Decision | None = None
    promotion: PromotionRecord | None = None
    texts: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def _texts(chunks_dir: Path, records: Sequence[QueryEvaluation]) -> dict[str, str]:
    """Chunk id / doc id -> a short text, for the ids the report shows (a document shows its title or first chunk)."""
    wanted = {h.id for r in records for h in (*r.base_ranking, *r.finetuned_ranking)} | {
        i for r in records for i in r.relevant}
    out: dict[str, str] = {}
    for c in read_chunks(chunks_dir):
        if c.chunk_id in wanted:
            out[c.chunk_id] = c.text
        if c.doc_id in wanted and c.doc_id not in out:
            out[c.doc_id] = c.title or c.text
    return {k: " ".join(v.split())[:SNIPPET] for k, v in out.items()}


def load_inputs(artifacts: Mapping[str, Path | str | None], status: str = "succeeded",
                error: str | None = None) -> ReportInputs:
    """Read the report's inputs from a run's stage artifacts (keys: stage names, values: artifact folders).

    A missing or unreadable artifact leaves its section empty with the reason in ``missing``.
    """
    inputs = ReportInputs(status=status, error=error)
    readers: dict[str, tuple[str, Callable[[Path], object]]] = {
        "evaluation": ("evaluate", lambda d: read_result(d, EvaluationResult)),
        "per_query": ("evaluate", read_per_query),
        "train": ("train", lambda d: read_result(d, TrainResult)),
        "validation": ("validate", read_validation_report),
        "registry": ("register", lambda d: read_result(d, RegistryRecord)),
        "decision": ("gate", lambda d: read_result(d, Decision)),
        "promotion": ("promote", lambda d: read_result(d, PromotionRecord)),
    }
    for attr, (stage, read) in readers.items():
        folder = artifacts.get(stage)
        if not folder:
            inputs.missing[attr] = f"the {stage} stage did not run or did not finish"
            continue
        try:
            setattr(inputs, attr, read(Path(folder)))
        except InputError as exc:
            inputs.missing[attr] = str(exc)
    if inputs.per_query and artifacts.get("ingest"):
        try:
            inputs.texts = _texts(Path(artifacts["ingest"]), inputs.per_query)
        except InputError as exc:
            inputs.missing["texts"] = str(exc)
    return inputs


# ------------------------------------------------------------------------------------------------ HTML
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:0 20px 40px;color:#1f2328}
h1{font-size:22px;margin:20px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.status.ok{background:#1a7f37}.status.bad{background:#cf222e}.status.no{background:#9a6700}
.up{color:#1a7f37}.down{color:#cf222e}.muted{color:#656d76}.error{color:#cf222e;font-weight:600}
.hit{background:#dafbe1}.queries td{max-width:480px}ol{margin:0;padding-left:20px}
svg text{font:11px system-ui,sans-serif;fill:#1f2328}svg .value{fill:#656d76}
.bar.base{fill:#8c959f}.bar.finetuned{fill:#0969da}
.zero,.axis{stroke:#656d76;stroke-width:1}.ci{stroke-width:3}.ci.up,.mean.up{stroke:#1a7f37;fill:#1a7f37}
.ci.down,.mean.down{stroke:#cf222e;fill:#cf222e}.ci.flat,.mean.flat{stroke:#656d76;fill:#656d76}
.bin.up{fill:#1a7f37}.bin.down{fill:#cf222e}.bin.flat{fill:#8c959f}
path.loss{fill:none;stroke:#0969da;stroke-width:2}.point{fill:#0969da}
"""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _num(x: float | int | None, digits: int = 4, signed: bool = False) -> str:
    if x is None:
        return '<td class="num">–</td>'
    if isinstance(x, int):
        return f'<td class="num">{x}</td>'
    cls = (" up" if x > TIE else " down" if x < -TIE else "") if signed else ""
    return f'<td class="num{cls}">{x:+.{digits}f}</td>' if signed else f'<td class="num">{x:.{digits}f}</td>'


def _ci(iv: Interval | None) -> str:
    if iv is None:
        return '<td class="num muted">n &lt; 2</td>'
    cls = "up" if iv.low > 0 else "down" if iv.high < 0 else "muted"
    return f'<td class="num {cls}">[{iv.low:+.4f}, {iv.high:+.4f}]</td>'


def _gain_interval(iv: GainInterval | None) -> str:
    """A gate interval's cell: ``[low, high]`` over n queries (``–`` when the gate had none)."""
    if iv is None:
        return '<td class="num muted">–</td>'
    return _ci(Interval(iv.mean, iv.low, iv.high)).replace("</td>", f" over {iv.n} queries</td>")


def _comparison_rows(comparisons: Sequence[Comparison], label: Callable[[Comparison], str]) -> list[list[str]]:
    return [[f"<td>{_e(label(c))}</td>", _num(c.n), _num(c.base), _num(c.finetuned),
             _num(c.finetuned - c.base, signed=True), _ci(c.interval), _num(c.wins), _num(c.ties), _num(c.losses)]
            for c in comparisons]


_CMP_HEAD = ["queries", "base", "fine-tuned", "gain", f"{CONFIDENCE:.0%} CI of the gain", "wins", "ties", "losses"]


def _missing(inputs: ReportInputs, *keys: str) -> str:
    why = [inputs.missing[k] for k in keys if k in inputs.missing]
    return f'<p class="muted">Not available: {_e(why[0]) if why else "no data"}.</p>'


def _header(inputs: ReportInputs) -> str:
    ok = inputs.status == "succeeded"
    parts = [f'<h1>embedforge run report</h1><p>Run <span class="status {"ok" if ok else "bad"}" id="run-status">'
             f'{_e(inputs.status)}</span>']
    ev = inputs.evaluation
    if ev is not None:
        parts.append(f' &middot; base model <code>{_e(ev.models.get("base", "?"))}</code> &middot; '
                     f'{ev.counts.get("eval_queries", len(inputs.per_query))} eval queries over '
                     f'{ev.counts.get("corpus_chunks", "?")} chunks')
    if inputs.registry is not None:
        parts.append(f' &middot; registered <code>{_e(inputs.registry.model_name)}</code> '
                     f'v{_e(inputs.registry.version)} (MLflow run <code>{_e(inputs.registry.run_id)}</code>)')
    parts.append("</p>")
    if inputs.error:
        parts.append(f'<p class="error" id="run-error">{_e(inputs.error)}</p>')
    if not ok:
        parts.append('<p class="muted">A partial report: sections of stages that did not finish say so.</p>')
    return "".join(parts)


def _gate(inputs: ReportInputs) -> str:
    d = inputs.decision
    if d is None:
        return "<h2>Gate decision</h2>" + _missing(inputs, "decision")
    # Without a promotion record the promote step has not run yet (the pipeline's report step runs beside it) or
    # failed (then the run's status and error say so).
    promoted = inputs.promotion is not None and inputs.promotion.promoted
    verdict = ("promoted" if promoted else "approved for promotion") if d.promote else "not promoted"
    cls = "ok" if d.promote else "no"
    rule = f"{d.rule}" + (f" ({d.fallback})" if d.fallback else "")
    level = f"{d.confidence:.0%} " if d.confidence is not None else ""
    rows = [["<td>metric</td>", f"<td>{_e(d.metric)} on {_e(d.eval_set)}</td>"],
            ["<td>rule</td>", f"<td>{_e(rule)}</td>"],
            ["<td>fine-tuned (challenger)</td>", _num(d.challenger)], ["<td>base</td>", _num(d.base_value)],
            ["<td>gain over base</td>", _num(d.margin, signed=True)],
            [f"<td>{level}interval of the gain over base</td>", _gain_interval(d.vs_base)],
            ["<td>required gain</td>", _num(d.min_improvement)]]
    if d.champion_value is not None:
        rows += [[f"<td>champion v{_e(d.champion_version)}</td>", _num(d.champion_value)],
                 ["<td>gain over champion</td>", _num(d.champion_margin, signed=True)],
                 [f"<td>{level}interval of the gain over the champion</td>", _gain_interval(d.vs_champion)],
                 ["<td>non-inferiority margin</td>", _num(d.non_inferiority_margin)]]
    if inputs.promotion is not None:
        rows.append(["<td>served as</td>", f"<td>{_e(inputs.promotion.triton_model_name)} "
                     f"v{_e(inputs.promotion.version)} (alias {_e(inputs.promotion.alias)})</td>"])
    return (f'<h2>Gate decision</h2><p><span class="status {cls}" id="gate-verdict">{verdict}</span> '
            f'<span id="gate-reason">{_e(d.reason)}</span></p>' + _table(["", "value"], rows, "gate"))


def _metrics(inputs: ReportInputs) -> str:
    ev = inputs.evaluation
    if ev is None:
        return "<h2>Base vs fine-tuned</h2>" + _missing(inputs, "evaluation")
    out = ["<h2>Base vs fine-tuned</h2>"]
    recs = inputs.per_query
    if recs:
        comps = [compare(recs, m) for m in ev.finetuned if m in recs[0].finetuned]
        out.append(f"<p>Mean over {len(recs)} held-out queries; the interval is a paired bootstrap "
                   f"({BOOTSTRAP_RESAMPLES} resamples of the queries) of the per-query gain. Wins/ties/losses "
                   "count queries whose score went up / stayed / went down.</p>")
        out.append(_table(["metric", *_CMP_HEAD], _comparison_rows(comps, lambda c: c.metric), "metrics"))
        k = ev.primary_metric.partition("@")[2]
        at_k = [c for c in comps if c.metric.endswith(f"@{k}")]
        out.append(f'<div class="figures">{metric_bars(at_k)}{interval_plot(at_k)}</div>')
    else:
        out.append(_missing(inputs, "per_query").replace("</p>", " (no confidence intervals)</p>"))
        rows = [[f"<td>{_e(m)}</td>", _num(ev.base[m]), _num(v), _num(ev.delta.get(m), signed=True)]
                for m, v in ev.finetuned.items()]
        out.append(_table(["metric", "base", "fine-tuned", "gain"], rows, "metrics"))
    if ev.external is not None:
        x = ev.external
        rows = [[f"<td>{_e(m)}</td>", _num(x.base[m]), _num(v), _num(x.delta.get(m), signed=True)]
                for m, v in x.finetuned.items()]
        out.append(f"<h3>External collection <code>{_e(x.path)}</code> ({x.counts.get('queries', '?')} queries)"
                   "</h3>" + _table(["metric", "base", "fine-tuned", "gain"], rows, "external"))
    out.append(_dimensions(ev))
    return "".join(out)


def _dimensions(ev: EvaluationResult) -> str:
    """The primary metric at each Matryoshka dimension (``by_dimension``), and the share of the full width's
    fine-tuned score each keeps; empty for a model trained without them."""
    if not ev.by_dimension:
        return ""
    m = ev.primary_metric
    full = ev.finetuned.get(m)
    rows = []
    for d, sides in sorted(ev.by_dimension.items(), reverse=True):
        fine, base = sides.get("finetuned", {}).get(m), sides.get("base", {}).get(m)
        share = f"<td class=\"num\">{100 * fine / full:.1f} %</td>" if fine is not None and full else _num(None)
        rows.append([f"<td>{d}</td>", _num(base), _num(fine), share])
    return (f"<h3>{_e(m)} by embedding dimension (Matryoshka)</h3><p>The first d dimensions of the same "
            "embeddings, renormalised: what a <code>dimensions</code> request returns.</p>"
            + _table(["dimensions", "base", "fine-tuned", "of full fine-tuned"], rows, "dimensions"))


def _groups(recs: Sequence[QueryEvaluation]) -> list[tuple[str, Callable[[QueryEvaluation], str | None]]]:
    """The groupings of queries the data has: LLM query/reasoning types, else the pair source."""
    out: list[tuple[str, Callable[[QueryEvaluation], str | None]]] = []
    if any(r.query_type for r in recs):
        out.append(("query type", lambda r: r.query_type))
    if any(r.reasoning_type for r in recs):
        out.append(("reasoning type", lambda r: r.reasoning_type))
    if not out:
        out.append(("pair source", lambda r: r.source or None))
    return out


def _per_type(inputs: ReportInputs) -> str:
    recs, ev = inputs.per_query, inputs.evaluation
    if not recs or ev is None:
        return "<h2>Per query type</h2>" + _missing(inputs, "per_query", "evaluation")
    metric = ev.primary_metric
    deltas = [r.finetuned[metric] - r.base[metric] for r in recs]
    out = [f"<h2>Per-query gains in {_e(metric)}</h2>", histogram(deltas, metric)]
    for title, key in _groups(recs):
        groups: dict[str, list[QueryEvaluation]] = {}
        for r in recs:
            groups.setdefault(key(r) or "(none)", []).append(r)
        comps = sorted(((name, compare(g, metric)) for name, g in groups.items()), key=lambda t: -t[1].n)
        rows = [[f"<td>{_e(name)}</td>", *row[1:]]
                for (name, _), row in zip(comps, _comparison_rows([c for _, c in comps], lambda c: c.metric))]
        out.append(f"<h3>By {title} ({_e(metric)})</h3>" + _table([title, *_CMP_HEAD], rows, "per-type"))
    return "".join(out)


def _ranking(inputs: ReportInputs, r: QueryEvaluation, hits: Sequence) -> str:
    rel = set(r.relevant)
    items = "".join(
        f'<li class="{"hit" if h.id in rel else ""}"><code>{_e(h.id)}</code> {h.score:.3f} '
        f'<span class="muted">{_e(inputs.texts.get(h.id, ""))}</span></li>' for h in hits[:TOP_HITS])
    return f"<td><ol>{items}</ol></td>"


def _queries(inputs: ReportInputs) -> str:
    recs, ev = inputs.per_query, inputs.evaluation
    if not recs or ev is None:
        return "<h2>Most improved and regressed queries</h2>" + _missing(inputs, "per_query", "evaluation")
    m = ev.primary_metric
    by_gain = sorted(recs, key=lambda r: r.finetuned[m] - r.base[m])
    improved = [r for r in reversed(by_gain) if r.finetuned[m] - r.base[m] > TIE][:TOP_QUERIES]
    regressed = [r for r in by_gain if r.finetuned[m] - r.base[m] < -TIE][:TOP_QUERIES]
    out = ["<h2>Most improved and regressed queries</h2>",
           f'<p class="muted">Top {TOP_HITS} hits of each model (id, score, text); relevant hits are green.</p>']
    for title, chosen, cls in (("Most improved", improved, "improved"), ("Most regressed", regressed, "regressed")):
        if not chosen:
            out.append(f"<h3>{title}</h3><p class='muted'>No query {cls}.</p>")
            continue
        rows = []
        for r in chosen:
            relevant = ", ".join(r.relevant)
            kind = f" &middot; {_e(r.query_type)}" if r.query_type else ""
            rows.append([f"<td>{_e(r.query)}<br><span class='muted'>{_e(r.query_id)}{kind} &middot; relevant: "
                         f"{_e(relevant)}</span></td>",
                         f'<td class="num">{r.base[m]:.3f} → {r.finetuned[m]:.3f}</td>',
                         _ranking(inputs, r, r.base_ranking), _ranking(inputs, r, r.finetuned_ranking)])
        out.append(f"<h3>{title}</h3>" + _table(["query", _e(m), "base ranking", "fine-tuned ranking"], rows,
                                                 f"queries {cls}"))
    return "".join(out)


def _training(inputs: ReportInputs) -> str:
    t = inputs.train
    if t is None:
        return "<h2>Training</h2>" + _missing(inputs, "train")
    pts = [(p.step, p.loss) for p in t.loss_history]
    info = (f"<p>{len(pts)} logged steps &middot; final loss {t.final_loss:.4f} &middot; {t.train_seconds:.0f} s "
            f"({t.examples_per_second:.1f} examples/s) on {_e(t.device)} ({_e(t.precision)})</p>")
    return ("<h2>Training loss</h2>" + info + (loss_curve(pts) or '<p class="muted">No loss was logged.</p>')
            + (_schedule(t.schedule) if t.schedule is not None else ""))


def _schedule(c: ScheduleChoice) -> str:
    """What ``train.schedule`` trained with and why; with ``auto``, what the search cost and every probe's held-out
    nDCG@10 per checkpoint (epochs), the settings trained with marked."""
    aug = ", with the augmentation rows" if c.augment else ""
    head = (f"<h3>Schedule ({_e(c.mode)})</h3><p>Trained with learning rate {c.learning_rate:.2e}, temperature "
            f"{c.temperature:g}, {c.epochs:g} epochs{aug}: {_e(c.reason)}.</p>")
    if not c.trials:
        return head
    search = (f"<p>Search: {c.probe_steps} probe steps ({c.probe_steps / max(c.fixed_steps, 1):.1f} &times; the "
              f"fixed run's {c.fixed_steps}) in {c.probe_seconds:.0f} s; {c.heldout_queries} held-out train queries, "
              f"base model {c.base_score:.4f}"
              + (f"; {c.reused_probes} probes taken from an interrupted attempt's journal" if c.reused_probes else "")
              + ".</p>")
    rows = [[f"<td>{'&#10003;' if _trained_with(c, t) else ''}</td>", f'<td class="num">{t.learning_rate:.2e}</td>',
             f'<td class="num">{t.temperature:g}</td>', f"<td>{'yes' if t.augment else 'no'}</td>", _num(t.steps),
             "<td>" + " &middot; ".join(f"{k}: {v:.4f}" for k, v in t.scores.items()) + "</td>"] for t in c.trials]
    return head + search + _table(["trained with", "learning rate", "temperature", "augmentation rows", "steps",
                                   "held-out nDCG@10 by epoch"], rows, "schedule")


def _trained_with(c: ScheduleChoice, t: ScheduleTrial) -> bool:
    return (math.isclose(t.learning_rate, c.learning_rate) and math.isclose(t.temperature, c.temperature)
            and t.augment == c.augment)


def _validation(inputs: ReportInputs) -> str:
    v = inputs.validation
    if v is None:
        return "<h2>Data validation</h2>" + _missing(inputs, "validation")
    failed = sum(not c.success for c in v.results)
    head = (f'<p><span class="status {"ok" if v.success else "bad"}" id="validation-status">'
            f'{"passed" if v.success else "failed"}</span> {len(v.results) - failed} of {len(v.results)} '
            "checks passed</p>")
    rows = []
    for c in v.results:
        examples = "; ".join(f"{e.get('query_id')}: {e.get('query')!r} {e.get('detail') or ''}".strip()
                             for e in c.examples[:2])
        observed = "" if c.observed_value is None else str(c.observed_value)
        rows.append([f"<td>{_e(c.check)}</td>", f"<td class='{'up' if c.success else 'down'}'>"
                     f"{'ok' if c.success else 'FAILED'}</td>", _num(c.unexpected_count),
                     f"<td>{_e(observed[:120])}</td>", f"<td>{_e(examples[:400])}</td>"])
    return "<h2>Data validation</h2>" + head + _table(["check", "result", "unexpected", "observed", "examples"],
                                                      rows, "validation")


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one self-contained HTML document (no script, no external resource)."""
    sections = [_header(inputs), _gate(inputs), _metrics(inputs), _per_type(inputs), _training(inputs),
                _queries(inputs), _validation(inputs)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>embedforge run report ({_e(inputs.status)})</title><style>{CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def write_report(artifacts: Mapping[str, Path | str | None], out_path: str | Path, status: str = "succeeded",
                 error: str | None = None) -> Path:
    """Render the report of a run's artifacts (stage name -> folder) into ``out_path``; return the path."""
    out_path = Path(out_path)
    atomic_write_text(out_path, render_report(load_inputs(artifacts, status=status, error=error)))
    log.info("wrote the run report %s", out_path)
    return out_path


def log_to_mlflow(report_path: str | Path, registry_dir: str | Path, tracking_uri: str = "") -> str:
    """Attach the report to the registered version's MLflow run as ``report/report.html``, whatever the local
    file is called (a KFP output file has no extension, and MLflow's viewer picks the renderer by extension).

    Returns:
        The run id.

    Raises:
        InputError: No registry record in ``registry_dir``.
        ConfigError: No tracking URI, or MLflow refused the upload.
    """
    import shutil
    import tempfile

    from mlflow.exceptions import MlflowException

    from embedforge.registry.mlflow import (
        client_for,
        mlflow_error,
        resolve_tracking_uri,
    )

    reg = read_result(registry_dir, RegistryRecord)
    uri = resolve_tracking_uri(tracking_uri, recorded=reg.tracking_uri)
    try:
        with tempfile.TemporaryDirectory(prefix="embedforge-report-") as tmp:
            named = Path(tmp) / REPORT_FILE
            shutil.copyfile(report_path, named)
            client_for(uri).log_artifact(reg.run_id, str(named), artifact_path="report")
    except MlflowException as exc:
        raise mlflow_error(f"attach the report to run {reg.run_id}", uri, exc) from None
    return reg.run_id

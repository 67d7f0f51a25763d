"""Inline SVG charts of the run report (no script, nothing fetched at view time)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from embedforge.retrieval.stats import Comparison


# ------------------------------------------------------------------------------------------------ SVG
def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _svg(width: int, height: int, body: str, label: str, cls: str) -> str:
    return (f'<svg class="chart {cls}" role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def metric_bars(comparisons: Sequence[Comparison]) -> str:
    """Grouped horizontal bars (0..1): base and fine-tuned mean per metric."""
    left, width, row = 110, 360, 34
    body = []
    for i, c in enumerate(comparisons):
        y = 10 + i * row
        body.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_e(c.metric)}</text>')
        for j, (who, v) in enumerate((("base", c.base), ("finetuned", c.finetuned))):
            w = max(0.0, min(1.0, v)) * width
            body.append(f'<rect class="bar {who}" x="{left}" y="{y + j * 13}" width="{w:.1f}" height="12">'
                        f'<title>{who} {_e(c.metric)} {v:.4f}</title></rect>'
                        f'<text class="value" x="{left + w + 4:.1f}" y="{y + j * 13 + 10}">{v:.3f}</text>')
    height = 20 + row * len(comparisons)
    legend = (f'<rect class="bar base" x="{left}" y="{height - 8}" width="10" height="8"/>'
              f'<text x="{left + 14}" y="{height}">base</text>'
              f'<rect class="bar finetuned" x="{left + 60}" y="{height - 8}" width="10" height="8"/>'
              f'<text x="{left + 74}" y="{height}">fine-tuned</text>')
    return _svg(left + width + 60, height + 6, "".join(body) + legend, "base vs fine-tuned metrics", "bars")


def interval_plot(comparisons: Sequence[Comparison]) -> str:
    """Forest plot: each metric's mean gain with its confidence interval, around a zero line."""
    rows = [c for c in comparisons if c.interval is not None]
    if not rows:
        return ""
    left, width, row = 110, 360, 24
    lo = min(min(c.interval.low for c in rows), 0.0)
    hi = max(max(c.interval.high for c in rows), 0.0)
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * width

    height = 24 + row * len(rows)
    body = [f'<line class="zero" x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{height - 16}"/>',
            f'<text x="{left}" y="{height - 2}">{lo:+.3f}</text>',
            f'<text x="{left + width}" y="{height - 2}" text-anchor="end">{hi:+.3f}</text>']
    for i, c in enumerate(rows):
        y = 14 + i * row
        iv = c.interval
        cls = "up" if iv.low > 0 else "down" if iv.high < 0 else "flat"
        body.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{_e(c.metric)}</text>'
                    f'<line class="ci {cls}" x1="{x(iv.low):.1f}" y1="{y}" x2="{x(iv.high):.1f}" y2="{y}"/>'
                    f'<circle class="mean {cls}" cx="{x(iv.mean):.1f}" cy="{y}" r="4">'
                    f'<title>{_e(c.metric)} gain {iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]</title></circle>')
    return _svg(left + width + 20, height, "".join(body), "confidence intervals of the gains", "intervals")


def histogram(deltas: Sequence[float], metric: str, bins: int = 21) -> str:
    """Histogram of per-query gains (fine-tuned minus base) of ``metric``; losses red, wins green."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0:
        return ""
    edge = max(float(np.abs(d).max()), 1e-3)
    counts, edges = np.histogram(d, bins=bins, range=(-edge, edge))
    left, width, height = 40, 420, 140
    bw = width / bins
    top = counts.max()
    body = []
    for i, n in enumerate(counts):
        h = n / top * (height - 30)
        mid = (edges[i] + edges[i + 1]) / 2
        cls = "up" if edges[i] > 0 else "down" if edges[i + 1] < 0 else "flat"
        body.append(f'<rect class="bin {cls}" x="{left + i * bw:.1f}" y="{height - 20 - h:.1f}" '
                    f'width="{bw - 1:.1f}" height="{h:.1f}"><title>{n} queries around {mid:+.3f}</title></rect>')
    body.append(f'<line class="axis" x1="{left}" y1="{height - 20}" x2="{left + width}" y2="{height - 20}"/>'
                f'<text x="{left}" y="{height - 4}">{-edge:+.3f}</text>'
                f'<text x="{left + width / 2}" y="{height - 4}" text-anchor="middle">0</text>'
                f'<text x="{left + width}" y="{height - 4}" text-anchor="end">{edge:+.3f}</text>'
                f'<text x="{left}" y="12">max {top} queries per bin</text>')
    return _svg(left + width + 20, height, "".join(body), f"per-query gains in {metric}", "histogram")


def loss_curve(points: Sequence[tuple[float, float]]) -> str:
    """The training loss by step as one SVG path (plus a dot per logged point)."""
    if not points:
        return ""
    left, top, width, height = 50, 10, 420, 160
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    y0, y1 = float(ys.min()), float(ys.max()) if ys.max() > ys.min() else float(ys.min()) + 1
    px = left + (xs - x0) / (x1 - x0) * width
    py = top + (1 - (ys - y0) / (y1 - y0)) * height
    d = " ".join(f"{'M' if i == 0 else 'L'}{a:.1f},{b:.1f}" for i, (a, b) in enumerate(zip(px, py)))
    dots = "".join(f'<circle class="point" cx="{a:.1f}" cy="{b:.1f}" r="2"><title>step {int(s)}: loss {v:.4f}'
                   f'</title></circle>' for a, b, s, v in zip(px, py, xs, ys))
    axes = (f'<line class="axis" x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}"/>'
            f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + height}"/>'
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y1:.3f}</text>'
            f'<text x="{left - 4}" y="{top + height}" text-anchor="end">{y0:.3f}</text>'
            f'<text x="{left}" y="{top + height + 16}">step {int(x0)}</text>'
            f'<text x="{left + width}" y="{top + height + 16}" text-anchor="end">step {int(x1)}</text>')
    return _svg(left + width + 20, top + height + 24, axes + f'<path class="loss" d="{d}"/>' + dots,
                "training loss by step", "loss")



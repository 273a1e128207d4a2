"""Inline SVG charts for the HTML report: no library, no script, no external request.

Each function returns markup (``markupsafe.Markup``) in which every piece of text is
escaped, because labels are layer names from the model file. Colours come from CSS
classes (``series-0``..., ``sev-error``...) so a template override can restyle them.
Long per-channel series are thinned to at most :data:`MAX_POINTS` points by keeping each
bucket's minimum and maximum, so spikes stay visible while a ResNet-sized report stays
small.
"""

from __future__ import annotations

import math
from typing import Sequence

from markupsafe import Markup, escape

MAX_POINTS = 256
WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 26


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _num(value: float) -> str:
    """A coordinate with one decimal: enough for a 720-pixel-wide chart, and short."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def finite(values: Sequence[object]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def thin(values: Sequence[float], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """(index, value) pairs, at most ``limit``: per bucket, its minimum and maximum in order."""
    points = [(i, float(v)) for i, v in enumerate(values) if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / (limit // 2))
    kept: list[tuple[int, float]] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        kept += sorted({low, high})
    return kept


def _frame(label: str, lo: float, hi: float, x_label: str, body: list[str]) -> Markup:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{escape(_fmt(hi))}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">{escape(_fmt(lo))}</text>',
        f'<text class="tick" x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>',
        *body,
        "</svg>",
    ]
    return Markup("".join(parts))


def bar_chart(labels: Sequence[str], values: Sequence[float | None], *, label: str, x_label: str = "", marked: frozenset[str] = frozenset()) -> Markup:
    """One bar per label (e.g. per BN layer in depth order); ``marked`` labels get class ``marked``."""
    numbers = finite(v for v in values if v is not None)
    lo, hi = min([0.0, *numbers]), max([0.0, *numbers]) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(labels), 1)
    body = []
    for i, (name, value) in enumerate(zip(labels, values)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        top = TOP + plot_h * (hi - max(value, 0.0)) / (hi - lo)
        bottom = TOP + plot_h * (hi - min(value, 0.0)) / (hi - lo)
        css = "bar marked" if name in marked else "bar"
        body.append(
            f'<rect class="{css}" x="{_num(LEFT + i * step + step * 0.1)}" y="{_num(top)}" '
            f'width="{_num(max(step * 0.8, 0.5))}" height="{_num(max(bottom - top, 0.5))}">'
            f"<title>{escape(name)}: {escape(_fmt(value))}</title></rect>"
        )
    if labels:  # name the first and the last bar; the others say theirs on hover
        body.append(f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{escape(labels[0])}</text>')
        if len(labels) > 1:
            body.append(f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">{escape(labels[-1])}</text>')
    return _frame(label, lo, hi, x_label or f"{len(labels)} layers, input to output", body)


def line_chart(series: dict[str, Sequence[float]], *, label: str, x_label: str = "channel") -> Markup:
    """One polyline per named series over a shared index axis, with a legend."""
    thinned = {name: thin(values) for name, values in series.items()}
    numbers = [v for points in thinned.values() for _, v in points]
    if not numbers:
        return Markup("")
    lo, hi = min(numbers), max(numbers)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    count = max(len(v) for v in series.values())
    plot_w, plot_h = WIDTH - LEFT - RIGHT - 150, HEIGHT - TOP - BOTTOM
    x_scale = plot_w / max(count - 1, 1)
    body = []
    for n, (name, points) in enumerate(thinned.items()):
        coords = " ".join(f"{LEFT + i * x_scale:.0f},{_num(TOP + plot_h * (hi - v) / (hi - lo))}" for i, v in points)
        body.append(f'<polyline class="series series-{n % 6}" points="{coords}"><title>{escape(name)}</title></polyline>')
        legend_y = TOP + 14 + 16 * n
        body.append(f'<line class="series series-{n % 6}" x1="{WIDTH - 146}" y1="{legend_y - 4}" x2="{WIDTH - 130}" y2="{legend_y - 4}"/>')
        body.append(f'<text class="legend" x="{WIDTH - 126}" y="{legend_y}">{escape(name)}</text>')
    return _frame(label, lo, hi, f"{x_label} (0-{count - 1})", body)


def severity_bar(counts: dict[str, int], *, width: int = 200, height: int = 12) -> Markup:
    """A stacked bar of findings by severity (empty grey when there are none)."""
    total = sum(counts.values())
    label = ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no findings"
    parts = [
        f'<svg class="sevbar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<rect class="sev-none" x="0" y="0" width="{width}" height="{height}"/>',
    ]
    x = 0.0
    for name, n in counts.items():
        if n and total:
            w = width * n / total
            parts.append(f'<rect class="sev-{escape(name)}" x="{_num(x)}" y="0" width="{_num(w)}" height="{height}"/>')
            x += w
    parts.append("</svg>")
    return Markup("".join(parts))

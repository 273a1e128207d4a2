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
#: Room for the y-axis labels: "-1.23e+04" in the 11 px tick font is about 60 px wide.
LEFT, RIGHT, TOP, BOTTOM = 72, 8, 14, 26
#: A bar chart switches to a logarithmic axis when its largest value is this many times its smallest positive one.
LOG_SPAN = 100.0
#: Horizontal room per rotated bar label, and the height the labels may take below the axis.
LABEL_STEP = 14
LABEL_CHARS, CHAR_WIDTH, LABEL_ANGLE = 22, 6.2, 40


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _tick(value: float) -> str:
    """A short axis label: three significant digits, so it fits left of the axis."""
    return f"{value:.3g}"


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


def _frame(label: str, ticks: list[tuple[float, str]], x_label: str, body: list[str], width: int = WIDTH, height: int = HEIGHT, left: float = LEFT) -> Markup:
    """Axes, y ticks at the given (y coordinate, text) and the x-axis caption around ``body``."""
    bottom = HEIGHT - BOTTOM  # the plot keeps its height; a taller chart has room for labels below
    parts = [
        f'<svg class="chart{" wide" if width > WIDTH else ""}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{_num(left)}" y1="{TOP}" x2="{_num(left)}" y2="{bottom}"/>',
        f'<line class="axis" x1="{_num(left)}" y1="{bottom}" x2="{width - RIGHT}" y2="{bottom}"/>',
        *(f'<text class="tick" x="{_num(left - 4)}" y="{_num(y + 4)}" text-anchor="end">{escape(text)}</text>' for y, text in ticks),
        f'<text class="tick caption" x="{(left + width - RIGHT) / 2:.0f}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>',
        *body,
        "</svg>",
    ]
    return Markup("".join(parts))


class _Scale:
    """Value -> y coordinate, linear or (for positive values spanning :data:`LOG_SPAN` or more) base-10 logarithmic."""

    def __init__(self, numbers: list[float], top: float, bottom: float) -> None:
        self.top, self.bottom = top, bottom
        positive = [v for v in numbers if v > 0]
        self.log = bool(positive) and min(numbers) >= 0 and max(positive) / min(positive) >= LOG_SPAN
        if self.log:
            self.lo = math.floor(math.log10(min(positive)) - 0.5)  # the smallest bar still shows
            self.hi = max(math.ceil(math.log10(max(positive))), self.lo + 1)
        else:
            self.lo, self.hi = min([0.0, *numbers]), max([0.0, *numbers]) or 1.0

    def __call__(self, value: float) -> float:
        if self.log:
            position = (math.log10(value) - self.lo) / (self.hi - self.lo) if value > 0 else 0.0
        else:
            position = (value - self.lo) / (self.hi - self.lo)
        return self.bottom - (self.bottom - self.top) * min(max(position, 0.0), 1.0)

    @property
    def base(self) -> float:
        """Where bars start: zero, or the bottom of a logarithmic axis."""
        return self.bottom if self.log else self(0.0)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            every = max(1, math.ceil((self.hi - self.lo) / 6))
            return [(self(10.0**e), _tick(10.0**e)) for e in range(self.lo, self.hi + 1, every)]
        return [(self(v), _tick(v)) for v in sorted({self.lo, 0.0, self.hi})]


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    label: str,
    x_label: str = "",
    marked: frozenset[str] = frozenset(),
    threshold: float | None = None,
    threshold_label: str = "threshold",
) -> Markup:
    """One bar per label (e.g. per BN layer in depth order), readable from 0.1 to 1e5 at once.

    ``marked`` labels get class ``marked`` and their name under the axis (so do the first
    and the last); every bar names itself on hover. ``threshold`` draws a dashed line
    across. The axis turns logarithmic when the values span two decades or more; the
    chart widens (and its container scrolls) rather than let names overlap.
    """
    numbers = finite([v for v in values if v is not None] + ([threshold] if threshold is not None else []))
    named = [i for i, name in enumerate(labels) if name in marked or i in (0, len(labels) - 1)]
    texts = {i: labels[i] if len(labels[i]) <= LABEL_CHARS else labels[i][: LABEL_CHARS - 1] + "…" for i in named}
    width = max(WIDTH, LEFT + RIGHT + LABEL_STEP * len(labels) if len(named) > 2 else WIDTH)
    drop = math.sin(math.radians(LABEL_ANGLE)) * CHAR_WIDTH  # how far down a rotated label reaches, per character
    height = HEIGHT + round(max([0, *(len(t) for t in texts.values())]) * drop) + 8
    bottom = HEIGHT - BOTTOM
    scale = _Scale(numbers, TOP, bottom)
    step = (width - LEFT - RIGHT) / max(len(labels), 1)
    reach = math.cos(math.radians(LABEL_ANGLE)) * CHAR_WIDTH  # how far left a rotated label reaches, per character
    left = LEFT + max([0.0, *(len(texts[i]) * reach - LEFT - (i + 0.5) * step for i in named)])  # no label cut at the left edge
    width += round(left - LEFT)
    body = []
    for i, (name, value) in enumerate(zip(labels, values)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        top, base = sorted((scale(value), scale.base))
        css = "bar marked" if name in marked else "bar"
        body.append(
            f'<rect class="{css}" x="{_num(left + i * step + step * 0.1)}" y="{_num(top)}" '
            f'width="{_num(max(step * 0.8, 0.5))}" height="{_num(max(base - top, 1.0))}">'
            f"<title>{escape(name)}: {escape(_fmt(value))}</title></rect>"
        )
    for i in named:  # rotated, ending under the bar's centre
        x, y = left + (i + 0.5) * step, bottom + 10
        css = "tick layer marked" if labels[i] in marked else "tick layer"
        body.append(f'<text class="{css}" x="{_num(x)}" y="{y}" text-anchor="end" transform="rotate(-{LABEL_ANGLE} {_num(x)} {y})">{escape(texts[i])}</text>')
    if threshold is not None and math.isfinite(threshold):
        y = scale(threshold)
        body.append(f'<line class="threshold" x1="{_num(left)}" y1="{_num(y)}" x2="{width - RIGHT}" y2="{_num(y)}"><title>{escape(threshold_label)} {escape(_fmt(threshold))}</title></line>')
        body.append(f'<text class="threshold" x="{_num(left + 4)}" y="{_num(y - 4)}">{escape(threshold_label)} {escape(_fmt(threshold))}</text>')
    axis = "logarithmic axis" if scale.log else "linear axis"
    return _frame(label, scale.ticks(), x_label or f"{len(labels)} layers, input to output ({axis})", body, width, height, left)


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
    ticks = [(TOP, _tick(hi)), (TOP + plot_h, _tick(lo))]
    return _frame(label, ticks, f"{x_label} (0-{count - 1})", body)


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

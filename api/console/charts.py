"""Line and bar charts as inline SVG drawn on the server: no JavaScript library, nothing fetched.

Each chart is an <svg role="img"> with a title and a description naming its series; the page shows the
same figures in a table for screen readers and for copying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

# distinguishable and at least 3:1 against white (WCAG non-text contrast)
COLOURS = ("#0b5cad", "#b35900", "#1b6e3a", "#a4161a", "#6a3d9a", "#4a5568")
WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 12, 40


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    return f"{value:.0f}{unit}" if value >= 10 or value == int(value) else f"{value:.2g}{unit}"


def _round_top(value: float) -> float:
    """The axis' top: four grid steps of 1, 2, 2.5 or 5 times a power of ten, reaching `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value / 4))
    step = next(k * power for k in (1, 2, 2.5, 5, 10) if k * power * 4 >= value)
    return float(step * 4)


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str = "%",
    y_max: float | None = None,
) -> Markup:
    """An SVG line chart of `series` ((name, values) with None for a missing point) over `labels`."""
    values = [v for _, vs in series for v in vs if v is not None]
    top = y_max if y_max is not None else _round_top(max(values, default=1.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(labels) - 1)

    def x(i: int) -> float:
        return LEFT + plot_w * i / n

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(v, top) / top)

    names = ", ".join(name for name, _ in series)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT + 16 * len(series)}" '
        f'role="img" aria-label="{escape(title)}: {escape(names)}">',
        f"<title>{escape(title)}</title>",
    ]
    for k in range(5):  # grid lines and the y axis' labels
        v = top * k / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#d5dbe3"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11" fill="#4a5568">'
            f"{escape(_fmt(v, unit))}</text>"
        )
    step = max(1, len(labels) // 6)
    for i, label in enumerate(labels):
        if i % step == 0 or i == len(labels) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                f'fill="#4a5568">{escape(label)}</text>'
            )
    for s, (name, vs) in enumerate(series):
        colour = COLOURS[s % len(COLOURS)]
        points = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for px, py in points:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>')
        ly = HEIGHT + 16 * s
        parts.append(
            f'<rect x="{LEFT}" y="{ly - 9}" width="14" height="4" fill="{colour}"/>'
            f'<text x="{LEFT + 20}" y="{ly}" font-size="12" fill="#1d2430">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


BAR_ROW, BAR_LABEL = 24, 150  # a bar's height with its gap; the width kept for the row labels


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    empty: str = "",
    unit: str = "",
) -> Markup:
    """An SVG chart of horizontal bars, one per label with `series` ((name, values)) stacked in it and
    the row's total written after it; `empty` is written instead when every value is 0."""
    totals = [sum(vs[i] for _, vs in series) for i in range(len(labels))]
    top = max(totals, default=0) or 1.0
    plot_w = WIDTH - BAR_LABEL - RIGHT - 40
    legend = 16 * len(series) if len(series) > 1 else 0
    height = TOP + BAR_ROW * max(1, len(labels)) + 8 + legend
    names = ", ".join(name for name, _ in series)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-label="{escape(title)}: {escape(names)}">',
        f"<title>{escape(title)}</title>",
    ]
    if not any(totals):
        parts.append(
            f'<text x="{LEFT}" y="{TOP + 16}" font-size="13" fill="#4a5568">{escape(empty)}</text></svg>'
        )
        return Markup("".join(parts))
    for i, label in enumerate(labels):
        y = TOP + BAR_ROW * i
        shown = label if len(label) <= 14 else label[:13] + "…"
        parts.append(
            f'<text x="{BAR_LABEL - 8}" y="{y + 14}" text-anchor="end" font-size="12" fill="#1d2430">'
            f"{escape(shown)}</text>"
        )
        x = float(BAR_LABEL)
        for s, (_, vs) in enumerate(series):
            w = plot_w * vs[i] / top
            if w > 0:
                colour = COLOURS[s % len(COLOURS)]
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{BAR_ROW - 8}" fill="{colour}"/>'
                )
                x += w
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + 14}" font-size="12" fill="#4a5568">'
            f"{escape(_fmt(totals[i], unit))}</text>"
        )
    if legend:
        for s, (name, _) in enumerate(series):
            ly, colour = TOP + BAR_ROW * len(labels) + 16 + 16 * s, COLOURS[s % len(COLOURS)]
            parts.append(
                f'<rect x="{BAR_LABEL}" y="{ly - 9}" width="14" height="4" fill="{colour}"/>'
                f'<text x="{BAR_LABEL + 20}" y="{ly}" font-size="12" fill="#1d2430">{escape(name)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))

"""Line charts as inline SVG drawn on the server: no JavaScript library, nothing fetched.

Each chart is an <svg role="img"> with a title and a description naming its series; the page shows the
same figures in a table for screen readers and for copying.
"""

from __future__ import annotations

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


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str = "%",
    y_max: float | None = None,
) -> Markup:
    """An SVG line chart of `series` ((name, values) with None for a missing point) over `labels`."""
    values = [v for _, vs in series for v in vs if v is not None]
    top = y_max if y_max is not None else (max(values) if values else 1.0) or 1.0
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

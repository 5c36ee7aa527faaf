"""Line charts drawn on the server as inline SVG: no chart library, no script, no CDN.

A chart is a few polylines over a time axis; a series breaks where a bucket had no data. The
SVG carries a title for screen readers and the page shows the same figures as a table under it.
Colours come from the stylesheet (`series-0`, `series-1`, ...), so the SVG holds no style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 26
Y_TICKS = 4
X_TICKS = 5


@dataclass(frozen=True)
class Series:
    """One line: its name and a value per time (None: no data there)."""

    name: str
    points: Sequence[tuple[datetime, float | None]]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten at or above `value` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0):
        if step * power >= value:
            return step * power
    return 10.0 * power


def _label(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def line_chart(
    title: str,
    series: Sequence[Series],
    start: datetime,
    end: datetime,
    unit: str,
    gap_s: float,
) -> Markup:
    """An SVG line chart of `series` between `start` and `end`; a gap over `gap_s` breaks a line."""
    values = [v for s in series for _, v in s.points if v is not None]
    top = nice_ceiling(max(values, default=0.0))
    span = max((end - start).total_seconds(), 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(moment: datetime) -> float:
        return LEFT + plot_w * min(max((moment - start).total_seconds() / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(Y_TICKS + 1):
        value = top * i / Y_TICKS
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/><text class="axis" x="{LEFT - 6}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{_label(value)}</text>'
        )
    for i in range(X_TICKS):
        moment = start + (end - start) * i / (X_TICKS - 1)
        anchor = "start" if i == 0 else "end" if i == X_TICKS - 1 else "middle"
        parts.append(
            f'<text class="axis" x="{x(moment):.1f}" y="{HEIGHT - 8}" '
            f'text-anchor="{anchor}">{moment:%H:%M}</text>'
        )
    parts.append(
        f'<text class="axis unit" x="{LEFT}" y="{TOP - 2}" text-anchor="start">'
        f"{escape(unit)}</text>"
    )
    for index, line in enumerate(series):
        for run in _runs(line.points, gap_s):
            if len(run) == 1:
                moment, value = run[0]
                parts.append(
                    f'<circle class="series-{index}" cx="{x(moment):.1f}" '
                    f'cy="{y(value):.1f}" r="2"/>'
                )
            else:
                coords = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in run)
                parts.append(f'<polyline class="series-{index}" points="{coords}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _runs(
    points: Sequence[tuple[datetime, float | None]], gap_s: float
) -> list[list[tuple[datetime, float]]]:
    """The points split where a value is missing or the next point is too far away."""
    runs: list[list[tuple[datetime, float]]] = []
    current: list[tuple[datetime, float]] = []
    for moment, value in points:
        if value is None or (current and (moment - current[-1][0]).total_seconds() > gap_s):
            if current:
                runs.append(current)
            current = []
        if value is not None:
            current.append((moment, value))
    if current:
        runs.append(current)
    return runs

"""Line charts as inline SVG, drawn by hand: no plotting library, no script, crisp in print.

`line_chart` draws one line per series over shared x positions (versions or optimizer steps);
a missing value breaks its line (never drawn as 0); marked points (where a task was trained)
get a larger, outlined marker. The y axis spans the data (min to max, padded), not 0-1: short
runs score in a narrow band that a 0-1 axis would flatten. Colours come from a palette that
stays distinct in grey print (Okabe-Ito), and every line also has its own marker shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS = ("circle", "square", "diamond", "triangle")
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 150, 34, 52


@dataclass
class Series:
    label: str
    values: list[float | None]  # one per x position
    marked: set[int] = field(default_factory=set)  # positions drawn with a larger marker


def _range(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or 0.05
    return low - pad, high + pad


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _marker(kind: str, x: float, y: float, r: float, colour: str, outline: bool) -> str:
    stroke = f' stroke="#000" stroke-width="{1.6 if outline else 0.6}"'
    if kind == "square":
        return (f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
                f'fill="{colour}"{stroke}/>')  # fmt: skip
    if kind == "diamond":
        pts = f"{x:.1f},{y - r * 1.3:.1f} {x + r * 1.3:.1f},{y:.1f} {x:.1f},{y + r * 1.3:.1f} {x - r * 1.3:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{colour}"{stroke}/>'
    if kind == "triangle":
        pts = (
            f"{x:.1f},{y - r * 1.3:.1f} {x + r * 1.2:.1f},{y + r:.1f} {x - r * 1.2:.1f},{y + r:.1f}"
        )
        return f'<polygon points="{pts}" fill="{colour}"{stroke}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colour}"{stroke}/>'


def line_chart(
    series: Sequence[Series],
    x_labels: Sequence[str],
    *,
    title: str,
    x_title: str,
    y_title: str,
    marked_note: str | None = None,
) -> str:
    """An `<svg>` element: `series` over `x_labels`, with axes, grid, legend and a <title>."""
    values = [v for s in series for v in s.values if v is not None]
    low, high = _range(values)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(x_labels), 1)

    def x_at(i: int) -> float:
        return LEFT + (plot_w * (i + 0.5) / n)

    def y_at(v: float) -> float:
        return TOP + plot_h * (1 - (v - low) / (high - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'class="chart" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#9aa5b1"/>',
        f'<text x="{LEFT}" y="20" class="ct">{escape(title)}</text>',
    ]
    for tick in _ticks(low, high):
        y = y_at(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e3e8ee"/>')  # fmt: skip
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="ca">'
                     f"{tick:.3f}</text>")  # fmt: skip
    step = max(1, -(-n // 12))  # at most ~12 labels on the x axis
    for i, label in enumerate(x_labels):
        if i % step == 0 or i == n - 1:
            parts.append(f'<text x="{x_at(i):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" '
                         f'class="ca">{escape(label)}</text>')  # fmt: skip
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle" '
                 f'class="cl">{escape(x_title)}</text>')  # fmt: skip
    parts.append(f'<text transform="translate(14 {TOP + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle" class="cl">{escape(y_title)}</text>')  # fmt: skip
    for k, s in enumerate(series):
        colour, marker = PALETTE[k % len(PALETTE)], MARKERS[k % len(MARKERS)]
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append((x_at(i), y_at(v)))
        for run in runs:
            if len(run) > 1:
                pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                             'stroke-width="2"/>')  # fmt: skip
        for i, v in enumerate(s.values):
            if v is not None:
                big = i in s.marked
                parts.append(_marker(marker, x_at(i), y_at(v), 6 if big else 3.5, colour, big))
        ly = TOP + 8 + 20 * k
        parts.append(_marker(marker, WIDTH - RIGHT + 18, ly, 4, colour, False))
        parts.append(f'<line x1="{WIDTH - RIGHT + 8}" x2="{WIDTH - RIGHT + 28}" y1="{ly}" '
                     f'y2="{ly}" stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<text x="{WIDTH - RIGHT + 34}" y="{ly + 4}" class="ca">'
                     f"{escape(s.label)}</text>")  # fmt: skip
    if not values:  # an empty frame would read as a chart of zeros
        parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
                     'text-anchor="middle" class="cl">no score recorded</text>')  # fmt: skip
    if marked_note:
        ly = TOP + 8 + 20 * len(series) + 6
        parts.append(f'<text x="{WIDTH - RIGHT + 8}" y="{ly + 4}" class="ca">'
                     f"{escape(marked_note)}</text>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)

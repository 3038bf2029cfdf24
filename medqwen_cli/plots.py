"""PNG plot of forgetting reports: per run, the accuracy matrix R and per-task curves.

One row of two panels per run (the figure is 13 x 4.8 inches per run at 100 dpi, so
1300 x 480*runs pixels): left, R as a heatmap (rows: base then versions; columns: tasks; the cell
where each task was trained is outlined; missing cells are grey, hatched and labelled "n/a");
right, each task's score across versions, with a star where it was trained and gaps where a
score is missing. The run's ACC / BWT / FWT / forgetting head its panels, and their definitions
are printed at the bottom.

The colour map and every y axis span the data's own range (min to max over all runs, shared so
runs compare by eye; `colour_range`), not 0-1: scores of a short run may sit in 0.13-0.32, where a
0-1 scale paints every cell alike. The colour bar's label gives the range and says so, and every
cell is annotated with its value.

When the runs have forgetting curves (evaluations with a `step`, from `--watch`), one more row
(or rows, three panels each) of the same height follows: one panel per (watched task A, trained
task(s) B), one line per run, A's score against the optimizer step of the version training B,
titled with its definition ("score of A while training v on B, every N steps").

matplotlib is imported lazily and drawn through the Agg canvas directly (no pyplot, no global
backend switch), so this works headless and costs nothing until called. The file is written to
a temporary name in the same directory and renamed into place.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medqwen_cli.errors import EvaluationError
from medqwen_cli.forgetting import ForgettingReport, TrainingCurve

WIDTH_IN = 13.0
HEIGHT_PER_RUN_IN = 4.8
FOOTER_IN = 0.9
DPI = 100
MISSING_COLOR = "#d9d9d9"


CURVES_PER_ROW = 3


def colour_range(values: Sequence[float]) -> tuple[float, float]:
    """(low, high) of the colour map and y axes: the data's min and max; a single value gets
    +-0.05 around it, no value at all 0-1."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-9:
        return low - 0.05, high + 0.05
    return low, high


def figure_size_px(n_runs: int, curve_rows: int = 0) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for `n_runs` runs and `curve_rows` rows of curves."""
    rows = n_runs + curve_rows
    return round(WIDTH_IN * DPI), round((HEIGHT_PER_RUN_IN * rows + FOOTER_IN) * DPI)


def curve_panels(
    reports: Sequence[ForgettingReport],
) -> list[tuple[tuple[str, tuple[str, ...]], list[tuple[str, TrainingCurve]]]]:
    """((watched task, trained tasks), [(run name, curve), ...]) per panel, in first-seen order."""
    panels: dict[tuple[str, tuple[str, ...]], list[tuple[str, TrainingCurve]]] = {}
    for report in reports:
        for curve in report.curves:
            panels.setdefault((curve.task, tuple(curve.trained)), []).append((report.name, curve))
    return list(panels.items())


def _curve_panel(ax, key, lines, vmin: float, vmax: float) -> None:
    task, trained = key
    versions = {c.version for _, c in lines}
    intervals = {c.eval_every for _, c in lines}
    if len(versions) == 1 and len(intervals) == 1:  # the definition, as every line shares it
        title = lines[0][1].definition
        labels = [run for run, _ in lines]
    else:
        title = f"score of {task} while training on {', '.join(trained)}"
        labels = [
            f"{run}: {c.version}" + (f", every {c.eval_every} steps" if c.eval_every else "")
            for run, c in lines
        ]
    for label, (_, curve) in zip(labels, lines, strict=True):
        x = [p.step for p in curve.points]
        y = [float("nan") if p.value is None else p.value for p in curve.points]
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.6, label=label)
    pad = 0.04 * (vmax - vmin)
    ax.set_ylim(vmin - pad, vmax + pad)
    ax.set_xlabel(f"optimizer step (training on {', '.join(trained)})", fontsize=9)
    metrics = sorted({c.metric for _, c in lines})
    ax.set_ylabel(f"{task}: " + ", ".join(metrics), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="run", title_fontsize=8, frameon=False)
    ax.set_title(textwrap.fill(title, 46), fontsize=10)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _heatmap(ax, report: ForgettingReport, vmin: float, vmax: float):
    import numpy as np
    from matplotlib.patches import Rectangle

    m = report.matrix
    data = np.array([[np.nan if v is None else v for v in row] for row in m.values], dtype=float)
    image = ax.imshow(
        np.ma.masked_invalid(data), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto"
    )
    cmap = image.get_cmap()
    for r, row in enumerate(m.values):
        for c, value in enumerate(row):
            if value is None:
                ax.add_patch(
                    Rectangle(
                        (c - 0.5, r - 0.5),
                        1,
                        1,
                        facecolor=MISSING_COLOR,
                        hatch="///",
                        edgecolor="#9a9a9a",
                        linewidth=0,
                    )
                )
                ax.text(c, r, "n/a", ha="center", va="center", fontsize=9, color="#404040")
                continue
            red, green, blue, _ = cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.55
            ax.text(
                c,
                r,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    for task, r in m.trained_row.items():
        c = m.tasks.index(task)
        ax.add_patch(
            Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="#e4572e", linewidth=2.2)
        )
    ax.set_xticks(range(len(m.tasks)), labels=m.tasks, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(m.rows)), labels=m.rows, fontsize=9)
    ax.set_xlabel("task (column j)", fontsize=9)
    ax.set_ylabel("model after version (row i)", fontsize=9)
    ax.set_title(f"{report.name}: R[i][j] (outlined: where trained)", fontsize=10)
    return image


def _curves(ax, report: ForgettingReport, vmin: float, vmax: float) -> None:
    m = report.matrix
    x = list(range(len(m.rows)))
    for c, task in enumerate(m.tasks):
        y = [float("nan") if row[c] is None else row[c] for row in m.values]
        (line,) = ax.plot(x, y, marker="o", markersize=4, linewidth=1.6, label=task)
        t = m.trained_row[task]
        if m.values[t][c] is not None:
            ax.plot([t], [m.values[t][c]], marker="*", markersize=13, color=line.get_color())
    ax.set_xticks(x, labels=m.rows, rotation=30, ha="right", fontsize=9)
    ax.set_xlim(-0.3, len(x) - 0.7)
    pad = 0.04 * (vmax - vmin)
    ax.set_ylim(vmin - pad, vmax + pad)  # one scale for every run, so runs compare by eye
    ax.set_xlabel("model after version", fontsize=9)
    ax.set_ylabel(
        "score (" + ", ".join(sorted({str(v) for v in m.metrics.values()})) + ")", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        title="task",
        title_fontsize=8,
        frameon=False,
    )
    figures = "   ".join(f"{f.name} {_fmt(f.value)}" for f in report.figures())
    ax.set_title(f"{report.name}: per-task score (star: just trained)\n{figures}", fontsize=10)


def _matplotlib() -> tuple[Any, Any]:
    """(FigureCanvasAgg, Figure). The first import with a fresh font cache logs "generated new
    fontManager" at INFO, which the CLI's stderr would show; matplotlib's logger is held at
    WARNING for the import only (its warning that building the cache takes a while still shows)."""
    log = logging.getLogger("matplotlib")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    finally:
        log.setLevel(level)
    return FigureCanvasAgg, Figure


def plot_forgetting(reports: Sequence[ForgettingReport], path: str | os.PathLike[str]) -> Path:
    """Draw `reports` side by side (one row each) into a PNG at `path`; returns the path."""
    if not reports:
        raise EvaluationError("no forgetting report to plot", hint="pass at least one run")
    try:
        FigureCanvasAgg, Figure = _matplotlib()
    except ImportError as exc:
        raise EvaluationError(
            "matplotlib is needed for --plot but is not installed",
            hint="reinstall medqwen-cli with its dependencies (matplotlib): pip install -c constraints.txt -e .",
        ) from exc

    values = [v for r in reports for row in r.matrix.values for v in row if v is not None]
    panels = curve_panels(reports)
    values += [
        p.value for _, lines in panels for _, c in lines for p in c.points if p.value is not None
    ]
    vmin, vmax = colour_range(values)
    curve_rows = -(-len(panels) // CURVES_PER_ROW)

    width, height = figure_size_px(len(reports), curve_rows)
    height_in = height / DPI
    fig = Figure(figsize=(width / DPI, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    # Columns: heatmap | colour bar | gap | curves (legend in the right margin).
    grid = fig.add_gridspec(
        len(reports) + curve_rows,
        4,
        width_ratios=[1.0, 0.035, 0.3, 1.3],
        left=0.08,
        right=0.87,
        top=1 - 0.55 / height_in,
        bottom=(FOOTER_IN + 0.75) / height_in,
        hspace=1.6 / HEIGHT_PER_RUN_IN,
        wspace=0.04,
    )
    for i, report in enumerate(reports):
        image = _heatmap(fig.add_subplot(grid[i, 0]), report, vmin, vmax)
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[i, 1]))
        bar.set_label(
            f"score (colour spans the data, {vmin:.2f} to {vmax:.2f}; not 0-1)", fontsize=8
        )
        _curves(fig.add_subplot(grid[i, 3]), report, vmin, vmax)
    for row in range(curve_rows):
        cells = grid[len(reports) + row, :].subgridspec(1, CURVES_PER_ROW, wspace=0.3)
        chunk = panels[row * CURVES_PER_ROW : (row + 1) * CURVES_PER_ROW]
        for column, (key, lines) in enumerate(chunk):
            _curve_panel(fig.add_subplot(cells[0, column]), key, lines, vmin, vmax)
    definitions = "\n".join(f.definition for f in reports[0].figures())
    fig.text(0.01, 0.012, definitions, fontsize=8, family="monospace", va="bottom", ha="left")

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out

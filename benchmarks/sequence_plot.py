"""The sequence study's figure: each task's accuracy across the sequence, one panel per
(method, strategy), a row per strategy and a column per method so that it reads at page width;
joint's accuracy per task dotted (benchmarks/sequence_report.py --figure)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from sequence_report import acc, comparable, groups_of, matrix
from sequence_study import TASKS


def plot(results: dict, path: Path) -> None:
    """Each task's accuracy after each task of the sequence (seed mean), one panel per
    (method, strategy): a row per strategy, a column per method; joint's per task dotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = groups_of(comparable(results)[0])
    panels = [k for k in groups if k[1] != "joint"]
    methods = sorted({m for m, _ in panels})
    names = sorted({s for _, s in panels})
    fig = Figure(figsize=(4.6 * len(methods), 2.6 * len(names)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), len(methods), squeeze=False, sharex=True)
    colors = ["C0", "C1", "C2", "C3", "C4"]
    for col, method in enumerate(methods):
        for row, name in enumerate(names):
            ax = axes[row][col]
            group = groups.get((method, name), [])
            joint = groups.get((method, "joint"), [])
            if not group:  # this method has no cell of the strategy yet
                ax.text(0.5, 0.5, "no cells yet", ha="center", va="center", transform=ax.transAxes)
            for j, task in enumerate(TASKS):
                xs = list(range(j, len(TASKS)))
                if group:
                    ys = [statistics.mean(matrix(c)[i][j] for c in group) for i in xs]
                    ax.plot([x + 1 for x in xs], ys, "o-", color=colors[j], label=task, ms=3)
                if joint:
                    top = statistics.mean(acc(c["steps"][0], task) for c in joint)
                    ax.axhline(top, color=colors[j], ls=":", lw=0.8)
            ax.set_title(f"{method}, {name} ({len(group)} seed(s))", fontsize=9)
            ax.set_ylim(0, 1.02)
            ax.set_xticks(range(1, len(TASKS) + 1))
            ax.set_xlim(0.7, len(TASKS) + 0.3)
            if row == len(names) - 1:
                ax.set_xlabel("after task", fontsize=8)
            if col == 0:
                ax.set_ylabel("accuracy (unseen)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.print_png(str(tmp))
    os.replace(tmp, path)

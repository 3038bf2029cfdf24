"""The forgetting study's figures: A's forgetting curves, and retention against plasticity.

Both take the runs `study_report.comparable` returns (their rows carry the A group when a
(method, seed) has more than one A version) and write a PNG atomically.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from study_report import row_of, strategy_of
from study_stats import MEASURES, METHODS, PAIRS, TASK_A, t_interval


def _save(fig, canvas, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.print_png(str(tmp))
    os.replace(tmp, path)


def plot_curves(runs: list[dict], base: dict | None, path: Path) -> None:
    """A's accuracy and answer NLL while training the second task: mean over seeds with a
    band of one standard deviation, one line per method; conflict and control side by side.
    `joint` runs are left out (their curve starts at the init and runs twice the steps)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in runs if strategy_of(r) != "joint"]
    pairs = [p for p in PAIRS if any(p in r["pairs"] for r in runs)]
    fig = Figure(figsize=(6.2 * len(pairs), 7.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(pairs), squeeze=False)
    labels = list(dict.fromkeys(row_of(r) for r in runs))
    for col, pair in enumerate(pairs):
        for row, (index, what) in enumerate(((1, "accuracy"), (2, "answer NLL"))):
            ax = axes[row][col]
            for label in labels:
                curves = [
                    r["pairs"][pair]["curve"] for r in runs
                    if row_of(r) == label and pair in r["pairs"]
                ]  # fmt: skip
                if not curves:
                    continue
                steps = sorted({int(p[0]) for c in curves for p in c})
                mean, sd = [], []
                for s in steps:
                    vals = [p[index] for c in curves for p in c if int(p[0]) == s]
                    mean.append(statistics.mean(vals))
                    sd.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                line = ax.plot(steps, mean, marker="o", label=f"{label} ({len(curves)} seeds)")[0]
                ax.fill_between(
                    steps, [m - d for m, d in zip(mean, sd, strict=True)],
                    [m + d for m, d in zip(mean, sd, strict=True)], color=line.get_color(), alpha=0.15,
                )  # fmt: skip
            if base is not None:
                key = "acc" if index == 1 else "nll"
                ax.axhline(
                    base[TASK_A][key], color="grey", linestyle="--", label="base (zero-shot)"
                )
            ax.set_xlabel(f"optimizer step while training {PAIRS[pair]}")
            ax.set_ylabel(f"{TASK_A} {what}")
            kind = "conflicting rules" if pair == "conflict" else "same rules"
            ax.set_title(f"{pair}: {TASK_A} -> {PAIRS[pair]} ({kind})", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"Forgetting curve: {TASK_A} scored while the next task trains\n"
        "(mean over seeds, band = 1 sd)", fontsize=11,
    )  # fmt: skip
    _save(fig, canvas, path)


def plot_tradeoff(runs: list[dict], path: Path, pair: str = "conflict") -> None:
    """Retention against plasticity, one point per configuration (and A group), mean over seeds
    with 95% intervals both ways: y = the share of A's records right after A and wrong after B
    (lost; gains on A's wrong answers cannot hide a loss), x = B after B. The targets (lost <=
    0.05, B after B >= 0.95: the paper's "about 5 % forgetting" with B learned) bound the
    shaded corner."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in runs if pair in r["pairs"]]
    fig = Figure(figsize=(9.6, 5.4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    # one colour per strategy (shared by the methods), one marker per method
    strategies = list(dict.fromkeys(strategy_of(r) for r in runs))
    colours = {s: f"C{i % 10}" for i, s in enumerate(strategies)}
    markers = dict(zip(METHODS, "osD^", strict=True))
    lowest, highest = 0.95, 0.1
    for label in dict.fromkeys(row_of(r) for r in runs):
        rows = [r for r in runs if row_of(r) == label]
        x = t_interval([MEASURES["B after B"][1](r, pair) for r in rows])
        y = t_interval([MEASURES["A lost"][1](r, pair) for r in rows])
        lowest = min(lowest, x[0] if math.isnan(x[1]) else x[1])
        highest = max(highest, y[0] if math.isnan(y[2]) else y[2])
        ax.errorbar(
            x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
            marker=markers.get(rows[0]["method"], "o"), color=colours[strategy_of(rows[0])],
            markersize=7, capsize=3, alpha=0.85, label=f"{label} ({len(rows)} seeds)",
        )  # fmt: skip
    left = max(0.0, math.floor((lowest - 0.02) * 20) / 20)  # B after B is the narrow axis
    ax.fill_between(
        [0.95, 1.05], -0.05, 0.05, color="green", alpha=0.08,
        label="targets: lost <= 0.05, B >= 0.95",
    )  # fmt: skip
    ax.set_xlabel(f"B after B: accuracy on {PAIRS[pair]} after training it (plasticity)")
    ax.set_ylabel(f"share of {TASK_A} records lost (right after A, wrong after B)")
    ax.set_title(f"{pair}: {TASK_A} -> {PAIRS[pair]}, mean and 95% interval over seeds "
                 "(colour: strategy, marker: method)", fontsize=10)  # fmt: skip
    ax.set_xlim(left, 1.02)
    ax.set_ylim(-0.05, min(1.0, highest + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _save(fig, canvas, path)

"""`medqwen forgetting-report`: accuracy matrix, ACC/BWT/FWT/forgetting of one or more bundles,
and the forgetting curves recorded by `train`/`continue --watch`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import resolve_format

FORMATS = ("table", "json", "csv", "markdown")
CSV_COLUMNS = ["run", "kind", "row", "task", "name", "value", "definition", "reason", "step"]
FIGURE_COLUMNS = ["figure", "value", "definition", "reason"]
TASK_COLUMNS = [
    "task", "metric", "trained in", "just trained", "final", "drop", "relative drop", "forgetting"
]  # fmt: skip
CELL_DEF = "R[i][j] = score on task j after version i"


def _task_definitions() -> tuple[str, ...]:
    from medqwen_cli.forgetting import DROP_DEF, RELATIVE_DROP_DEF, TASK_FORGETTING_DEF

    return DROP_DEF, RELATIVE_DROP_DEF, TASK_FORGETTING_DEF


def forgetting_report(
    bundles: list[Path] | None = typer.Argument(
        None,
        help="Bundle directories, side by side (e.g. lora moelora sslora). Default: "
        "$MEDQWEN_BUNDLE, else the current directory or its nearest parent holding a bundle.",
        show_default=False,
    ),
    metric: str | None = typer.Option(
        None, "--metric", "-m", help="Metric for every task (default: each task's headline)."
    ),
    fmt: str = typer.Option(
        "",
        "--format",
        "-f",
        help="table, json, csv or markdown (default: table on a terminal, json otherwise).",
        show_default=False,
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw the matrices and per-task curves into this PNG, plus a row of forgetting "
        "curves (one line per bundle) when the bundles have --watch evaluations.",
    ),
) -> None:
    """Build each bundle's accuracy matrix R (rows: base then each version; columns: tasks in
    training order; cell: score on that task after that version) from its evaluations, and report
    ACC, BWT, FWT, forgetting and per-task drops, each with its definition. Missing cells are
    n/a, never 0.

    Evaluations with a step (from train/continue --watch) never fill R: they are forgetting
    curves, the score of a task while a version trained another, every N steps. They are listed
    per run ("curves" in JSON, kind=curve rows with a step column in CSV, a step x task table in
    table and markdown) and drawn by --plot."""
    from medqwen_cli.evaluation.bundle_report import forgetting_for_bundles

    fmt = resolve_format(fmt, FORMATS)
    runs = forgetting_for_bundles(list(bundles or [None]), metric=metric)
    for run in runs:
        for line in run.notes:
            _output.stderr.print(f"note: {line}", markup=False, highlight=False)
    if plot is not None:
        from medqwen_cli.plots import plot_forgetting

        path = plot_forgetting([run.report for run in runs], plot)
        _output.stderr.print(f"plot written to {path}", markup=False, highlight=False)
    if fmt == "json":
        sys.stdout.write(json.dumps({"runs": [r.to_dict() for r in runs]}, indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(row for run in runs for row in csv_rows(run.report))
    elif fmt == "markdown":
        sys.stdout.write("\n".join(markdown(run.report) for run in runs))
        if len(runs) > 1:
            columns, rows = _comparison(runs)
            sys.stdout.write("\n## side by side\n\n" + "\n".join(_md_table(rows, columns)) + "\n")
    else:
        for run in runs:
            _tables(run.report)
        if len(runs) > 1:
            columns, rows = _comparison(runs)
            _output.stdout.print(_output.table(rows, columns, title="side by side"))


def _comparison(runs: list[Any]) -> tuple[list[str], list[dict[str, str]]]:
    """One row per figure, one column per run (lora vs moelora vs sslora)."""
    columns = ["figure", *(r.name for r in runs), "definition"]
    rows = []
    for i, first in enumerate(runs[0].report.figures()):
        row = {"figure": first.name, "definition": first.definition}
        row.update({r.name: _fmt(r.report.figures()[i].value) for r in runs})
        rows.append(row)
    return columns, rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _matrix(report: Any) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of R; `*` marks the cell where a task was trained."""
    m = report.matrix
    header = ["row"] + [f"{t} ({m.metrics[t] or 'n/a'})" for t in m.tasks]
    rows = []
    for r, version in enumerate(m.rows):
        cells = {"row": version}
        for c, task in enumerate(m.tasks):
            star = " *" if m.trained_row[task] == r else ""
            cells[header[c + 1]] = _fmt(m.values[r][c]) + star
        rows.append(cells)
    return header, rows


def _curve_tables(report: Any) -> list[tuple[str, list[str], list[dict[str, Any]]]]:
    """(title, header, rows) per version with curves: one row per step, one column per watched
    task (its score; n/a where missing)."""
    by_version: dict[str, list[Any]] = {}
    for curve in report.curves:
        by_version.setdefault(curve.version, []).append(curve)
    tables = []
    for version, curves in by_version.items():
        header = ["step"] + [f"{c.task} ({c.metric})" for c in curves]
        steps = sorted({p.step for c in curves for p in c.points})
        rows = []
        for k in steps:
            row: dict[str, Any] = {"step": k}
            for column, curve in zip(header[1:], curves, strict=True):
                value = next((p.value for p in curve.points if p.step == k), None)
                row[column] = _fmt(value)
            rows.append(row)
        if len(curves) == 1:
            title = curves[0].definition
        else:
            every = {c.eval_every for c in curves}
            title = (
                f"score of {', '.join(c.task for c in curves)} while training {version} on "
                f"{', '.join(curves[0].trained)}"
                + (f", every {every.pop()} steps" if len(every) == 1 and None not in every else "")
            )
        tables.append((f"{report.name}: {title}", header, rows))
    return tables


def _figures(report: Any) -> list[dict[str, str]]:
    return [
        {"figure": f.name, "value": _fmt(f.value), "definition": f.definition, "reason": f.reason}
        for f in report.figures()
    ]


def _per_task(report: Any) -> list[dict[str, str]]:
    return [
        {
            "task": t.task,
            "metric": t.metric or "n/a",
            "trained in": t.trained_in,
            "just trained": _fmt(t.after_training),
            "final": _fmt(t.final),
            "drop": _fmt(t.drop.value),
            "relative drop": _fmt(t.relative_drop.value),
            "forgetting": _fmt(t.forgetting.value),
        }
        for t in report.per_task
    ]


def _tables(report: Any) -> None:
    # _output.table escapes titles, headers and cells: "R[T][j]" is never read as rich markup
    header, rows = _matrix(report)
    title = f"{report.name}: R[i][j] = score on task j after version i (* = just trained)"
    print_ = _output.stdout.print
    print_(_output.table(rows, header, title=title))
    print_(_output.table(_figures(report), FIGURE_COLUMNS))
    print_(_output.table(_per_task(report), TASK_COLUMNS))
    print_("\n".join(f"  {d}" for d in _task_definitions()) + "\n", markup=False, highlight=False)
    for title, header, rows in _curve_tables(report):
        print_(_output.table(rows, header, title=title))


def _md_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["" if row[c] is None else str(row[c]).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: Any) -> str:
    """One run as Markdown: the matrix, the figures with definitions, the per-task table."""
    header, rows = _matrix(report)
    lines = [f"## {report.name}", "", "R[i][j] = score on task j after version i "
             "(* = just trained)", ""]  # fmt: skip
    lines += _md_table(rows, header) + [""]
    lines += _md_table(_figures(report), FIGURE_COLUMNS) + [""]
    lines += _md_table(_per_task(report), TASK_COLUMNS) + [""]
    lines += [f"- {d}" for d in _task_definitions()]
    tables = _curve_tables(report)
    if tables:
        lines += ["", f"### {report.name}: forgetting curves", ""]
        for title, header, rows in tables:
            lines += [f"{title}:", ""] + _md_table(rows, header) + [""]
    return "\n".join(lines) + "\n"


def csv_rows(report: Any) -> list[dict[str, Any]]:
    """Tidy rows: every cell of R (kind=cell), every figure and per-task figure, every point of a
    forgetting curve (kind=curve, row = the version in training, with its step); missing = n/a."""
    m = report.matrix
    rows = [
        _csv_row(report.name, "cell", version, task, m.metrics[task], m.values[r][c], CELL_DEF)
        for r, version in enumerate(m.rows)
        for c, task in enumerate(m.tasks)
    ]
    for f in report.figures():
        rows.append(
            _csv_row(report.name, "figure", "", "", f.name, f.value, f.definition, f.reason)
        )
    for t in report.per_task:
        for f in (t.drop, t.relative_drop, t.forgetting):
            rows.append(
                _csv_row(report.name, "task", "", t.task, f.name, f.value, f.definition, f.reason)
            )
    for c in report.curves:  # row: the version in training; step: its optimizer steps done
        for p in c.points:
            rows.append(
                _csv_row(report.name, "curve", c.version, c.task, c.metric, p.value,
                         c.definition, step=p.step)
            )  # fmt: skip
    return rows


def _csv_row(
    run, kind, row, task, name, value, definition, reason=None, step=None
) -> dict[str, Any]:
    return {
        "run": run,
        "kind": kind,
        "row": row,
        "task": task,
        "name": name or "",
        "value": "n/a" if value is None else value,
        "definition": definition,
        "reason": reason or "",
        "step": "" if step is None else step,
    }

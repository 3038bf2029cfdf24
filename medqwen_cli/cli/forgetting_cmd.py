"""`medqwen forgetting-report`: accuracy matrix, ACC/BWT/FWT/forgetting of one or more bundles,
and the forgetting curves recorded by `train`/`continue --watch`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import FORMATS as _FORMATS
from medqwen_cli.cli._common import format_option, read_settings, resolve_format
from medqwen_cli.settings import Settings

FORMATS = (*_FORMATS, "markdown")
CSV_COLUMNS = ["run", "kind", "row", "task", "name", "value", "definition", "reason", "step"]
FIGURE_COLUMNS = ["figure", "value", "definition", "reason"]
TASK_COLUMNS = [
    "task", "metric", "trained in", "just trained", "final", "drop", "relative drop", "forgetting"
]  # fmt: skip
CELL_DEF = "R[i][j] = score on task j after version i"
MATRIX_DEF = f"{CELL_DEF} (* = just trained)"


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
    fmt: Annotated[str, format_option(FORMATS)] = "",
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
    fmt = resolve_format(fmt, FORMATS)
    report(list(bundles or [None]), metric=metric, fmt=fmt, plot=plot, settings=read_settings())


def report(
    bundles: list[Path | None],
    *,
    metric: str | None,
    fmt: str,
    plot: Path | None,
    settings: Settings,
) -> None:
    """The report of `bundles` on stdout, its notes on stderr, and the plot when asked; a `None`
    bundle is `settings`' default one."""
    from medqwen_cli.evaluation.bundle_report import forgetting_for_bundles

    runs = forgetting_for_bundles(bundles, metric=metric, settings=settings)
    for run in runs:
        for line in run.notes:
            _output.stderr.print(f"note: {line}", markup=False, highlight=False)
    if plot is not None:
        from medqwen_cli.plots import plot_forgetting

        path = plot_forgetting([run.report for run in runs], plot)
        _output.stderr.print(f"plot written to {path}", markup=False, highlight=False)
    blocks = [block for run in runs for block in _blocks(run.report, run.strategies)]
    if len(runs) > 1:
        columns, rows = _comparison(runs)
        blocks += [_output.Text(markdown="## side by side\n"),
                   _output.Rows(rows, columns, title="side by side")]  # fmt: skip
    _output.emit(
        fmt,
        blocks,
        csv=_output.Rows([row for run in runs for row in csv_rows(run.report)], CSV_COLUMNS),
        data={"runs": [r.to_dict() for r in runs]},
    )


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


def _matrix(report: Any, strategies: dict[str, str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of R; `*` marks the cell where a task was trained; a version trained with
    a continual strategy says which (`v0003 (replay 0.1)`)."""
    m = report.matrix
    header = ["row"] + [f"{t} ({m.metrics[t] or 'n/a'})" for t in m.tasks]
    rows = []
    for r, version in enumerate(m.rows):
        strategy = strategies.get(version, "none")
        cells = {"row": version if strategy == "none" else f"{version} ({strategy})"}
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


def _blocks(report: Any, strategies: dict[str, str]) -> list[_output.Block]:
    """One run, in table and Markdown output: the matrix, the figures with definitions, the
    per-task table, then a step x task table per version with forgetting curves."""
    header, rows = _matrix(report, strategies)
    definitions = _task_definitions()
    blocks: list[_output.Block] = [
        _output.Text(markdown=f"## {report.name}\n"),
        _output.Rows(rows, header, title=f"{report.name}: {MATRIX_DEF}", caption=MATRIX_DEF),
        _output.Rows(_figures(report), FIGURE_COLUMNS),
        _output.Rows(_per_task(report), TASK_COLUMNS),
        _output.Text(
            table="".join(f"  {d}\n" for d in definitions),
            markdown="".join(f"- {d}\n" for d in definitions),
        ),
    ]
    tables = _curve_tables(report)
    if tables:
        blocks.append(_output.Text(markdown=f"### {report.name}: forgetting curves\n"))
        blocks += [_output.Rows(rows, header, title=title, caption=f"{title}:")
                   for title, header, rows in tables]  # fmt: skip
        blocks.append(_output.Text(markdown=""))  # a blank line after the curves
    return blocks


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

"""All rendering: tables (rich), Markdown, JSON and CSV on stdout (`emit`); messages on stderr."""

from __future__ import annotations

import csv as _csv
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def _cell(value: Any) -> str:
    """Text of a table cell; escaped so `R[T][j]` or `[paths]` never vanish as rich markup."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return escape(str(value))


def print_table(console: Console, t: Table) -> None:
    """`t` on `console`. In a terminal rich fits it to the window; elsewhere (a log file, a
    pipe) rich would cut it at 80 columns (`headli…`), so it is printed at its natural width."""
    if console.is_terminal:
        console.print(t)
        return
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), t).maximum
    wide = Console(file=console.file, width=max(natural, console.width), soft_wrap=True)
    wide.print(t)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> Table:
    t = Table(title=escape(title) if title else None, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(escape(col))
    for row in rows:
        t.add_row(*(_cell(row.get(col)) for col in columns))
    return t


@dataclass(frozen=True)
class Rows:
    """One table of a result: rows (dicts) under named columns. `title` heads it in a terminal;
    `caption` is the line above it in Markdown."""

    rows: Sequence[Mapping[str, Any]]
    columns: Sequence[str]
    title: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Text:
    """Prose between tables, per format: `table` in a terminal, `markdown` in Markdown (None:
    nothing in that format)."""

    table: str | None = None
    markdown: str | None = None


Block = Rows | Text


def emit(
    fmt: str, blocks: Rows | Sequence[Block], *, data: Any = None, csv: Rows | None = None
) -> None:
    """Print a result on stdout; every command renders through here.

    table     every block: rich tables with their titles, text as given
    markdown  every block, a blank line apart: caption, pipe table; text as given
    csv       `csv` (default: the first table): header, then rows (None -> "", lists joined by ;)
    json      `data` (default: the first table's rows), indented
    jsonl     one compact line per item of `data` (a list)
    """
    blocks = [blocks] if isinstance(blocks, Rows) else list(blocks)
    tables = [b for b in blocks if isinstance(b, Rows)]
    if fmt in ("json", "jsonl"):
        data = list(tables[0].rows) if data is None else data
        if fmt == "json":
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            sys.stdout.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in data)
    elif fmt == "csv":
        view = csv or tables[0]
        writer = _csv.DictWriter(sys.stdout, fieldnames=list(view.columns), extrasaction="ignore")
        writer.writeheader()
        for row in view.rows:
            writer.writerow({c: _csv_cell(row.get(c)) for c in view.columns})
    elif fmt == "markdown":
        pieces = (_markdown(b) for b in blocks)
        sys.stdout.write("\n".join(p for p in pieces if p is not None))
    else:
        for b in blocks:
            if isinstance(b, Rows):
                print_table(stdout, table(b.rows, b.columns, b.title))
            elif b.table is not None:
                stdout.print(b.table, markup=False, highlight=False)


def _markdown(block: Block) -> str | None:
    if isinstance(block, Text):
        return block.markdown
    lines = [f"{block.caption}", ""] if block.caption else []
    lines += ["| " + " | ".join(block.columns) + " |", "|" + "---|" * len(block.columns)]
    for row in block.rows:
        cells = ["" if row[c] is None else str(row[c]).replace("|", "\\|") for c in block.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(map(str, value))
    return value


def error(message: str, hint: str | None = None) -> None:
    """A failure as `medqwen` reports it: `Error: ...`, then `Hint: ...`, on stderr."""
    sys.stderr.write(f"Error: {message}\n")
    if hint:
        sys.stderr.write(f"Hint: {hint}\n")


def note(message: str, *, warning: bool = False) -> None:
    """A human message on stderr (never mixed into results); `medqwen -q` keeps only warnings."""
    if warning or not quiet():
        stderr.print(escape(message), highlight=False)


def quiet() -> bool:
    """`medqwen -q`: only warnings and errors on stderr (no bars, no progress lines)."""
    return not logging.getLogger().isEnabledFor(logging.INFO)


class _Progress:
    """A rich progress bar on stderr when it is a terminal (and not -q); a no-op otherwise."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar = None
        self._task = None

    def __enter__(self) -> _Progress:
        if stderr.is_terminal and not quiet():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[item]}"), console=stderr, transient=True,
            )  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None, item="")
        return self

    def __call__(self, done: int, total: int, item: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, item=item)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def progress(description: str) -> _Progress:
    return _Progress(description)


class PhaseProgress:
    """Progress of a command that runs in phases (merge): the bar on a terminal, its item the
    phase; otherwise (a log file, CI) one plain line as each phase starts, with its step count
    and the time since the command started:

        merge (dense): calibrating mean gates (52 steps)  [14 s]

    The lines go through logging at INFO, so `medqwen -q` drops them. Called as a progress
    function `(done, total, phase)`; total 0: a phase without countable steps.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar = _Progress(description)
        self._plain = not stderr.is_terminal
        self._phase: str | None = None
        self._start = time.perf_counter()

    def __enter__(self) -> PhaseProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def __call__(self, done: int, total: int, phase: str = "") -> None:
        self._bar(done, max(total, 1), phase)  # rich divides by the total
        if not self._plain or phase == self._phase:
            return
        self._phase = phase
        steps = f" ({total} steps)" if total > 1 else ""
        logging.getLogger("medqwen_cli.cli").info(
            "%s: %s%s  [%.0f s]", self.description, phase, steps, time.perf_counter() - self._start
        )


class TrainProgress:
    """Training progress on stderr: the bar on a terminal; otherwise (a log file, CI) one plain
    line per logging step (`train.log_every`, and the last):

        train step 20/200  loss 1.2345  lr 9.8e-04  0.41 s/step  ETA 1:14

    s/step is wall time per step since the previous line (the --watch scoring included, so the
    ETA is honest); the lines go through logging at INFO, so `medqwen -q` drops them.
    Called as a `training.loop.ProgressFn`.
    """

    def __init__(self) -> None:
        self._bar = _Progress("train")
        self._plain = not stderr.is_terminal
        self._mark: tuple[float, int] | None = None  # (time, step) of the previous line

    def __enter__(self) -> TrainProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def __call__(self, done: int, total: int, stats: dict[str, Any]) -> None:
        now = time.perf_counter()
        self._bar(done, total, f"loss {stats['loss']:.4f}" if "loss" in stats else "")
        if self._mark is None or not stats:  # the first call: where training starts or resumes
            self._mark = (now, done)
            return
        if not (self._plain and stats.get("logged")):
            return
        since, from_step = self._mark
        per_step = (now - since) / max(done - from_step, 1)
        self._mark = (now, done)
        logging.getLogger("medqwen_cli.train").info(
            "train step %d/%d  loss %.4f  lr %.1e  %.2f s/step  ETA %s",
            done, total, stats["loss"], stats["lr"], per_step, _clock(per_step * (total - done)),
        )  # fmt: skip


def _clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

"""All rendering: tables (rich), JSON and CSV on stdout; messages on stderr."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Sequence
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


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> Table:
    t = Table(title=escape(title) if title else None, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(escape(col))
    for row in rows:
        t.add_row(*(_cell(row.get(col)) for col in columns))
    return t


def emit(
    fmt: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    data: Any = None,
) -> None:
    """Print `rows` as a table or CSV, or `data` (default: rows) as JSON."""
    if fmt == "json":
        sys.stdout.write(json.dumps(rows if data is None else data, indent=2, default=str) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_cell(row.get(c)) for c in columns})
    else:
        stdout.print(table(rows, columns, title))


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(map(str, value))
    return value


def key_values(pairs: Sequence[tuple[str, Any]], title: str | None = None) -> None:
    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in pairs:
        t.add_row(key, _cell(value))
    stdout.print(t)


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


def redirect_stdout_to_stderr():
    """Context: results printed inside go to stderr (used when one command drives others)."""
    import contextlib

    @contextlib.contextmanager
    def _swap():
        global stdout
        saved_console, saved_stream = stdout, sys.stdout
        stdout = stderr
        sys.stdout = sys.stderr
        try:
            yield
        finally:
            stdout, sys.stdout = saved_console, saved_stream

    return _swap()

"""All rendering: tables (rich), JSON and CSV on stdout; messages on stderr."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col)
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


def note(message: str) -> None:
    """A human message on stderr (never mixed into results)."""
    stderr.print(message, highlight=False)

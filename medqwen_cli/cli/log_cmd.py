"""`medqwen log [BUNDLE]`: the lineage, one line per version."""

from __future__ import annotations

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import BundleArg, FormatOpt, read_settings, resolve_format

COLUMNS = ["version", "parent", "tasks", "created", "command"]


def log(
    bundle: BundleArg = None,
    all_versions: bool = typer.Option(
        False, "--all", help="Every version, not only the head's lineage."
    ),
    fmt: FormatOpt = "",
) -> None:
    """List versions (newest first): id, parent, command, tasks, time."""
    from medqwen_cli.bundle import Bundle

    fmt = resolve_format(fmt)
    b = Bundle.open(bundle, read_settings())
    entries = b.manifest.versions if all_versions or not b.manifest.versions else b.lineage()
    rows = [
        {"version": e.id, "parent": e.parent, "tasks": e.tasks, "created": e.created,
         "command": e.command}
        for e in reversed(entries)
    ]  # fmt: skip
    marked = [{**row, "version": row["version"] + " (head)" * (row["version"] == b.head)}
              for row in rows]  # fmt: skip
    _output.emit(
        fmt,
        _output.Rows(marked, COLUMNS, title=str(b.root)),
        csv=_output.Rows(rows, COLUMNS),
        data=[{**e.model_dump(), "head": e.id == b.head} for e in reversed(entries)],
    )

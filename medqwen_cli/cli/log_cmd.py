"""`medqwen log [BUNDLE]`: the lineage, one line per version."""

from __future__ import annotations

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import BundleArg, FormatOpt, resolve_format


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
    b = Bundle.open(bundle)
    entries = b.manifest.versions if all_versions or not b.manifest.versions else b.lineage()
    rows = [
        {
            "version": e.id + (" (head)" if e.id == b.head and fmt == "table" else ""),
            "parent": e.parent,
            "tasks": e.tasks,
            "created": e.created,
            "command": e.command,
        }
        for e in reversed(entries)
    ]
    data = [{**e.model_dump(), "head": e.id == b.head} for e in reversed(entries)]
    _output.emit(
        fmt,
        rows,
        ["version", "parent", "tasks", "created", "command"],
        title=str(b.root),
        data=data,
    )

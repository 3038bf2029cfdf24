"""`medqwen log [BUNDLE]`: the lineage, one line per version."""

from __future__ import annotations

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import BundleArg, FormatOpt, read_settings, resolve_format

COLUMNS = ["version", "parent", "tasks", "created", "command", "acceptance"]


def log(
    bundle: BundleArg = None,
    all_versions: bool = typer.Option(
        False, "--all", help="Every version, not only the head's lineage."
    ),
    fmt: FormatOpt = "",
) -> None:
    """List versions (newest first): id, parent, tasks, acceptance, time, command. Without --all,
    the lineage of the head: the default version (a newer version that failed its acceptance
    criteria is listed with --all)."""
    from medqwen_cli.acceptance import NO_CRITERIA, read_log, statuses
    from medqwen_cli.bundle import Bundle

    fmt = resolve_format(fmt)
    b = Bundle.open(bundle, read_settings())
    entries = b.manifest.versions if all_versions or not b.manifest.versions else b.lineage()
    status = statuses(read_log(b.root)[0])
    rows = [
        {"version": e.id, "parent": e.parent, "tasks": e.tasks, "created": e.created,
         "command": e.command, "acceptance": status.get(e.id, NO_CRITERIA) if e.tasks else "-"}
        for e in reversed(entries)
    ]  # fmt: skip
    if b.manifest.head != b.head and not all_versions:
        _output.note(f"note: newer versions are not accepted (newest: {b.manifest.head}); "
                     "`medqwen log --all` lists them", warning=True)  # fmt: skip
    marked = [{**row, "version": row["version"] + " (head)" * (row["version"] == b.head)}
              for row in rows]  # fmt: skip
    _output.emit(
        fmt,
        _output.Rows(marked, COLUMNS, title=str(b.root)),
        csv=_output.Rows(rows, COLUMNS),
        data=[
            {**e.model_dump(), "head": e.id == b.head, "acceptance": row["acceptance"]}
            for e, row in zip(reversed(entries), rows, strict=True)
        ],  # fmt: skip
    )

"""`medqwen accept VERSION --by NAME --reason TEXT`: a person accepts a version that failed its
acceptance criteria; the override is recorded (who, why, when) and the version may become the
default again."""

from __future__ import annotations

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import FIELDS, FormatOpt, read_settings, resolve_format


def accept(
    version: str = typer.Argument(
        ..., help="The version to accept (v0003, 3).", show_default=False
    ),
    by: str = typer.Option(..., "--by", help="Who accepts it (a name the team knows)."),
    reason: str = typer.Option(..., "--reason", help="Why, in a sentence an auditor can check."),
    bundle: str | None = typer.Option(
        None,
        "--bundle",
        "-b",
        help="Bundle directory. Default: $MEDQWEN_BUNDLE, else the current directory or its "
        "nearest parent holding a bundle.",
        show_default=False,
    ),
    fmt: FormatOpt = "",
) -> None:
    """Record a human override of a version that failed its acceptance criteria. The line goes to
    the bundle's acceptance.jsonl (append-only, hash-chained); the version is then accepted and,
    when it is the newest of the lineage, the default version of every command."""
    from medqwen_cli.acceptance import record_override
    from medqwen_cli.bundle import Bundle

    fmt = resolve_format(fmt)
    b = Bundle.open(bundle, read_settings())
    line = record_override(b, version, by=by, reason=reason)
    rows = [
        {"field": "version", "value": f"{line['version']} accepted by override"},
        {"field": "by", "value": line["by"]},
        {"field": "reason", "value": line["reason"]},
        {"field": "recorded", "value": line["time"]},
        {
            "field": "default version",
            "value": f"{line['default_before']} -> {line['default_after']}",
        },
    ]
    _output.emit(fmt, _output.Rows(rows, FIELDS, title=str(b.root)), data=line)

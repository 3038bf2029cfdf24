"""Option types shared by commands: the git-like BUNDLE argument, --format, --set."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

BundleArg = Annotated[
    Path | None,
    typer.Argument(
        help="Bundle directory. Default: $MEDQWEN_BUNDLE, else the current directory or its "
        "nearest parent holding a bundle (like git).",
        show_default=False,
    ),
]

FORMATS = ("table", "json", "csv")
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="Output format: table, json or csv (default: table on a terminal, json otherwise).",
        show_default=False,
    ),
]

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field: --set train.lr=1e-4 (repeatable)."),
]


def resolve_format(value: str, allowed: tuple[str, ...] = FORMATS) -> str:
    if value in ("", "auto"):
        return "table" if sys.stdout.isatty() else "json"
    if value not in allowed:
        raise typer.BadParameter(
            f"{value!r} is not one of {', '.join(allowed)}", param_hint="--format"
        )
    return value


ARGV: list[str] | None = None  # set by main(); sys.argv otherwise


def command_line() -> str:
    """The command as typed, for version records (argv only: never data)."""
    args = ARGV if ARGV is not None else sys.argv[1:]
    return "medqwen " + " ".join(shlex.quote(a) for a in args)

"""Option types shared by commands: the git-like BUNDLE argument, --format, --set; and the
command's settings (`read_settings`), read from the environment once and passed down."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from medqwen_cli.settings import Settings

BundleArg = Annotated[
    Path | None,
    typer.Argument(
        help="Bundle directory. Default: $MEDQWEN_BUNDLE, else the current directory or its "
        "nearest parent holding a bundle (like git).",
        show_default=False,
    ),
]

FIELDS = ["field", "value"]  # the columns of a one-record result (init-experts, inspect, ...)
FORMATS = ("table", "json", "csv")  # every command; forgetting-report adds markdown, predict jsonl


def one_of(choices: Sequence[str]) -> str:
    """'a or b', 'one of a, b, c': the choices in a message or a help text."""
    return " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"


def check_choice(value: str, choices: Sequence[str], param_hint: str) -> str:
    """Bad usage (exit 2) unless `value` is one of `choices`."""
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not {one_of(choices)}", param_hint=param_hint)
    return value


def format_option(formats: Sequence[str] = FORMATS) -> Any:
    *first, last = formats
    return typer.Option(
        "--format",
        "-f",
        help=f"Output format: {', '.join(first)} or {last} (default: table on a terminal, json "
        "otherwise).",
        show_default=False,
    )


FormatOpt = Annotated[str, format_option()]

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field: --set train.lr=1e-4 (repeatable)."),
]


def resolve_format(value: str, allowed: Sequence[str] = FORMATS) -> str:
    if value in ("", "auto"):
        return "table" if sys.stdout.isatty() else "json"
    if value not in allowed:  # always 'one of': there are three or more
        raise typer.BadParameter(
            f"{value!r} is not one of {', '.join(allowed)}", param_hint="--format"
        )
    return value


def read_settings() -> Settings:
    """$MEDQWEN_BUNDLE and $MEDQWEN_CACHE_DIR, read once per command: the command passes the
    result to every library function it calls, which then reads no environment variable."""
    return Settings.from_env()


def command_line(ctx: typer.Context) -> str:
    """The command as typed, for version records (argv only: never data): the arguments `main`
    ran the app with (its context's `obj`), else this process's own."""
    args = ctx.obj if isinstance(ctx.obj, list) else sys.argv[1:]
    return "medqwen " + " ".join(shlex.quote(str(a)) for a in args)

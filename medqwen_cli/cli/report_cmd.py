"""`medqwen report [BUNDLE] --out report.html`: the bundle's audit report, as HTML or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import BundleArg, check_choice, read_settings
from medqwen_cli.settings import Settings

REPORT_FORMATS = ("html", "json")


def report(
    bundle: BundleArg = None,
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write the report to this file (atomically); default: stdout.",
        show_default=False,
    ),
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="html (default): one self-contained page (inline CSS and figures, no script, no "
            "network; prints on A4); json: the same content as data (schema: docs/report.md).",
        ),
    ] = "html",
) -> None:
    """Write one audit report of the bundle: header (base, fingerprint, method, default version,
    checksums verified now), lineage (task, strategy, recipe and data digests, parameters,
    training), performance (scores per record type, accuracy matrix, ACC/BWT/FWT/forgetting,
    forgetting curves), acceptance (criteria, checks, overrides) and limits. Reads files only;
    exits 1 after writing when a checksum or the acceptance log does not verify."""
    from medqwen_cli.errors import BundleIntegrityError

    check_choice(fmt, REPORT_FORMATS, "--format")
    data = write_report(bundle, out=out, fmt=fmt, settings=read_settings())
    problems = data["integrity"]["problems"] + data["integrity"]["acceptance_log"]
    if problems:
        raise BundleIntegrityError(
            f"the bundle does not verify ({len(problems)} problem(s), listed in the report): "
            + "; ".join(problems[:3]),
            "restore the damaged files from a backup copy of the bundle; `medqwen inspect` "
            "lists every problem",
        )


def write_report(
    bundle: Path | None, *, out: Path | None, fmt: str = "html", settings: Settings
) -> dict[str, Any]:
    """Build the report of `bundle` and write it, as `fmt`, to `out` (atomically) or to stdout;
    returns the report's data. `medqwen demo` ends with it."""
    from medqwen_cli._io import atomic_write_bytes
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.report import build_report, render_html

    data = build_report(Bundle.open(bundle, settings))
    text = render_html(data) if fmt == "html" else json.dumps(data, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, text.encode("utf-8"))
        _output.note(f"report written to {out}")
    return data

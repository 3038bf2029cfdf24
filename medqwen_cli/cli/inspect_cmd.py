"""`medqwen inspect [BUNDLE]`: manifest, versions, parameter counts, integrity.

The report always prints; when a file is missing or fails its checksum the command then exits 1
with an `Error:` naming the damaged files (unpublished directories left by a crash are listed
but harmless).
"""

from __future__ import annotations

import contextlib

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import FIELDS, BundleArg, FormatOpt, read_settings, resolve_format


def inspect(
    bundle: BundleArg = None,
    version: str | None = typer.Option(
        None, "--version", "-v", help="Version to count (default: head)."
    ),
    fmt: FormatOpt = "",
) -> None:
    """Show a bundle's base, method, versions, parameter counts and integrity check."""
    from medqwen_cli.acceptance import acceptance_fields
    from medqwen_cli.bundle import Bundle, summarize
    from medqwen_cli.continual.record import inspect_fields
    from medqwen_cli.errors import BundleError, BundleIntegrityError

    fmt = resolve_format(fmt)
    opened = Bundle.open(bundle, read_settings())
    summary = summarize(opened, version)
    if "version" in summary:  # the version's continual strategy (a damaged file: in problems)
        with contextlib.suppress(BundleError, OSError, ValueError):
            summary.update(inspect_fields(opened, summary["version"]))
    if "version" in summary:  # acceptance.jsonl: the version's status, the default version
        summary.update(acceptance_fields(opened, summary["version"]))
    base, method = summary["base"], summary["method"]
    rows = [
        {"field": "path", "value": summary["path"]},
        {
            "field": "base",
            "value": f"{base.get('model_id')} ({base.get('source')}, fingerprint {base.get('fingerprint')})",
        },
        {
            "field": "method",
            "value": " ".join(
                f"{k}={method[k]}"
                for k in ("method", "experts", "top_k", "rank", "scaling", "segments")
                if k in method
            ),
        },
        {"field": "versions", "value": summary["versions"]},
        {"field": "newest version", "value": summary["head"]},
        {"field": "default version", "value": summary.get("default_version")},
        {"field": "acceptance", "value": summary.get("acceptance")},
        {"field": "tasks seen", "value": summary["tasks_seen"]},
        {"field": "adapted layers", "value": summary.get("adapted_layers")},
        {"field": "trainable parameters", "value": summary.get("trainable_parameters")},
        {"field": "frozen init parameters", "value": summary.get("frozen_init_parameters")},
        {"field": "base parameters", "value": summary.get("base_parameters")},
        {"field": "trainable %", "value": summary.get("trainable_percent")},
        {"field": "integrity", "value": "ok" if not summary["problems"] else summary["problems"]},
    ]
    if "strategy" in summary:
        rows.insert(-1, {"field": "strategy", "value": summary["strategy"]})
    if summary.get("branches"):
        rows[[r["field"] for r in rows].index("trainable parameters")]["value"] = (
            f"{summary['trained_in_version']} in this version's branch "
            f"({summary['trainable_parameters']} adapter parameters in all, the rest frozen)"
        )
        sizes = ", ".join(f"{n:,}" for n in summary["branch_parameters"])
        rows.insert(
            -1,
            {"field": "protected branches", "value": f"{summary['branches']} ({sizes} parameters)"},
        )
    bases = summary.get("protect_bases")
    if bases:
        lo, hi = bases["share_of_inputs"]
        rows.insert(-1, {
            "field": "input bases",
            "value": f"{', '.join(bases['tasks'])}: {bases['groups']} layer inputs, {lo:.0%}-{hi:.0%} "
            f"of each, {bases['floats']:,} floats ({bases['what']})",
        })  # fmt: skip
    _output.emit(fmt, _output.Rows(rows, FIELDS, title="bundle"), data=summary)
    damaged = summary["damaged"]
    if damaged:
        raise BundleIntegrityError(
            f"integrity check failed: {len(damaged)} damaged file(s) in {summary['path']}: "
            + ", ".join(damaged),
            "restore them from a backup copy of the bundle; until then every command that uses "
            "an affected version refuses to run",
            damaged=damaged,
        )

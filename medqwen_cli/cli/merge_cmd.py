"""`medqwen merge`: export a bundle version as a deployable model (routed, dense or peft)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import (
    FIELDS,
    BundleArg,
    FormatOpt,
    check_choice,
    command_line,
    read_settings,
    resolve_format,
)
from medqwen_cli.merge.core import MODES  # torch-free: the merge package loads the rest lazily

if TYPE_CHECKING:
    from medqwen_cli.merge import MergeResult


def merge(
    ctx: typer.Context,
    bundle: BundleArg = None,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory to write (refused if it exists, unless --overwrite)."
    ),
    version: str | None = typer.Option(
        None, "--version", "-v", help="Version to export (v3, 3, v0003; default: the head)."
    ),
    mode: str = typer.Option(
        "routed",
        "--mode",
        "-m",
        help="routed: exact (base weights + routed adapter + modeling file); dense: mean-routed "
        "update folded into the weights (approximate, plain transformers); peft: the same update "
        "as a PEFT LoRA adapter (approximate).",
    ),
    calibration: list[str] | None = typer.Option(
        None,
        "--calibration",
        "-c",
        help="Task whose training split measures the mean routing weights and the fidelity "
        "(repeatable; a recipe task, a dataset path or builtin:NAME). Default for dense/peft: "
        "the version's tasks. With routed it only measures (exactness check).",
    ),
    calibration_samples: int = typer.Option(
        256,
        "--calibration-samples",
        "-n",
        help="Calibration samples, drawn evenly over the tasks; 20% are held out for fidelity.",
    ),
    rank: int | None = typer.Option(
        None,
        "--rank",
        help="peft only: singular components kept per layer (default: all, i.e. up to 2r; "
        "lossless). Fewer components lose fidelity; merge_report.json gives the energy dropped.",
    ),
    copy_base: bool = typer.Option(
        False,
        "--copy-base",
        help="routed only: copy the base weights (default: hard-link them when on the same "
        "filesystem, else copy).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing export in --out."
    ),
    no_eval: bool = typer.Option(
        False, "--no-eval", help="Skip the task metric before/after (logit fidelity only)."
    ),
    fmt: FormatOpt = "",
) -> None:
    """Export a bundle version for deployment. routed is exact; dense and peft fold the mean
    routing weights measured on calibration data into one update and report how close they stay
    (relative logit error, top-1 agreement, task metric before/after) in merge_report.json."""
    from medqwen_cli.bundle import Bundle

    fmt = resolve_format(fmt)
    check_choice(mode, MODES, "--mode")
    settings = read_settings()
    opened = Bundle.open(bundle, settings)  # a wrong path or version fails before torch loads
    opened.resolve_version(version)
    from medqwen_cli.merge import merge_bundle

    with _output.PhaseProgress(f"merge ({mode})") as bar:
        result = merge_bundle(
            opened, out, version=version, mode=mode, calibration=calibration or None,
            calibration_samples=calibration_samples, copy_base=copy_base, overwrite=overwrite,
            rank=rank, evaluate=not no_eval, command=command_line(ctx), progress=bar,
            settings=settings,
        )  # fmt: skip
    _output.emit(fmt, _output.Rows(_rows(result), FIELDS, title="merge"), data=result.to_dict())


def _rows(r: MergeResult) -> list[dict[str, Any]]:
    kind = "exact" if r.exact else "approximate"
    rows: list[dict[str, Any]] = [
        {"field": "export", "value": f"{r.out} ({r.mode}, {kind})"},
        {"field": "source", "value": f"{r.bundle} {r.version}"},
        {"field": "base", "value": f"{r.base} (weights: {r.base_weights})"},
        {"field": "layers", "value": r.layers},
    ]
    if r.peft_rank is not None:
        rows.append({"field": "peft rank", "value": r.peft_rank})
    if r.calibration:
        c = r.calibration
        rows.append(
            {"field": "calibration", "value": f"{', '.join(c['tasks'])}: {c['fit_samples']} fit, "
             f"{c['held_out_samples']} held out"}
        )  # fmt: skip
    fid = r.fidelity
    if fid is not None:
        rows += [
            {"field": "relative logit error", "value": f"mean {fid.mean_relative_logit_error:.3g}, "
             f"max {fid.max_relative_logit_error:.3g}"},
            {"field": "top-1 agreement",
             "value": f"{fid.top1_agreement:.4f} ({fid.tokens} tokens)"},
        ]  # fmt: skip
        for t in fid.task_metrics:
            rows.append(
                {"field": f"{t['task']} {t['metric']}",
                 "value": f"before {_num(t, 'before')}, after {_num(t, 'after')} (n={t['n']})"}
            )  # fmt: skip
        if fid.task_metrics_note:
            rows.append({"field": "task metric", "value": fid.task_metrics_note})
    elif not r.exact:
        rows.append({"field": "fidelity", "value": "not measured"})
    rows.append({"field": "time", "value": f"{r.seconds:.1f} s"})
    return rows


def _num(row: dict[str, Any], label: str) -> str:
    value = row[label]
    if value is None:  # undefined (e.g. no positive prediction): the reason, never a 0
        return f"- ({row.get(f'{label}_reason') or 'undefined'})"
    return f"{value:.4g}"

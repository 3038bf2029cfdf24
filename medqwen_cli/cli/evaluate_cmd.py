"""`medqwen evaluate`: score a bundle version (or the base alone) and record it in evals.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medqwen_cli.choices import SCORINGS
from medqwen_cli.cli import _output
from medqwen_cli.cli._common import (
    BundleArg,
    FormatOpt,
    check_choice,
    read_settings,
    resolve_format,
)

if TYPE_CHECKING:
    from medqwen_cli.evaluation.api import EvaluationResult

COLUMNS = ["task", "type", "metric", "value", "n"]


def evaluate(
    bundle: BundleArg = None,
    version: str | None = typer.Option(
        None, "--version", "-v", help="Version to evaluate (v3, 3, v0003; default: the head)."
    ),
    task: list[str] | None = typer.Option(
        None,
        "--task",
        "-t",
        help="Task to evaluate (repeatable): a recipe task, a dataset name or path, or "
        "builtin:NAME. Default: eval.tasks, else the tasks of the version's lineage.",
    ),
    base_only: bool = typer.Option(
        False, "--base-only", help="Evaluate the base model alone (the zero-shot row 'base')."
    ),
    scoring: str | None = typer.Option(
        None,
        "--scoring",
        help="Closed questions, POPE and classification: likelihood (score every candidate "
        "answer) or generate (generate and parse). Default: the recipe's eval.scoring.",
        show_default=False,
    ),
    save_predictions: Path | None = typer.Option(
        None,
        "--save-predictions",
        help="Write every answer to this JSONL file (id, task, type, prediction, reference).",
    ),
    overrides: list[str] | None = typer.Option(
        None,
        "--set",
        "-s",
        help="Override a field of the bundle's stored recipe for this evaluation only (the bundle "
        "is not changed): --set eval.max_samples=20 (repeatable).",
    ),
    fmt: FormatOpt = "",
) -> None:
    """Answer each task's evaluation split, print the metrics per task and record type, and
    append them to the bundle's evals.jsonl (read by forgetting-report)."""

    from medqwen_cli.evaluation.api import evaluate_bundle

    fmt = resolve_format(fmt)
    settings = read_settings()
    if scoring is not None:
        check_choice(scoring, SCORINGS, "--scoring")
    if base_only and version is not None:
        raise typer.BadParameter("give either --version or --base-only", param_hint="--version")
    with _output.progress("evaluate") as bar:
        result = evaluate_bundle(
            bundle,
            version=version,
            tasks=task or None,
            base_only=base_only,
            scoring=scoring,
            save_predictions=save_predictions,
            progress=bar,
            overrides=overrides,
            settings=settings,
        )
    note_result(result)
    rows = result.rows()
    marked = [{**row, "metric": row["metric"] + " *" * bool(row["headline"])} for row in rows]
    _output.emit(
        fmt,
        _output.Rows(marked, COLUMNS, title=f"{result.bundle} {result.version} (* headline)"),
        csv=_output.Rows(rows, [*COLUMNS, "headline", "reason"]),
        data=result.to_dict(),
    )


def note_result(result: EvaluationResult) -> None:
    """The stderr lines of an evaluation: the tasks left out (warnings: kept under -q), then
    samples, time, rate, where the lines and predictions went (dropped by -q)."""
    for line in result.notes:
        _output.note(f"note: {line}", warning=True)
    rate = result.samples_per_second
    _output.note(
        f"{result.version}: {result.n} samples, {len(result.tasks)} task(s), "
        f"{result.seconds:.1f} s ({rate:.2f} samples/s, scoring {result.scoring}); "
        f"{len(result.records)} lines appended to {Path(result.bundle) / 'evals.jsonl'}"
        if rate
        else f"{result.version}: {result.n} samples"
    )
    if result.predictions_file:
        _output.note(f"predictions written to {result.predictions_file}")

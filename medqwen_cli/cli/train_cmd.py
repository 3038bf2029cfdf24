"""`medqwen train` and `medqwen continue`: a new immutable version from the head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medqwen_cli.cli import _output
from medqwen_cli.cli._common import BundleArg, FormatOpt, SetOpt, command_line, resolve_format

RecipeOpt = typer.Option(
    None, "--recipe", "-r", help="Recipe file (default: the recipe stored in the bundle at init)."
)
RestartOpt = typer.Option(
    False, "--restart", help="Discard the checkpoints of an interrupted run and start over."
)


def _render(fmt: str, result: Any) -> None:
    r = result.to_dict()
    rows = [
        {"field": "version", "value": f"{r['version']} (parent {r['parent']})"},
        {"field": "tasks", "value": r["tasks"]},
        {
            "field": "steps",
            "value": r["steps"]
            if not r["resumed_from"]
            else f"{r['steps']} (resumed at {r['resumed_from']})",
        },
        {"field": "samples", "value": r["samples"]},
        {"field": "tokens", "value": r["tokens"]},
        {"field": "final loss", "value": r["final_loss"]},
        {"field": "mean loss", "value": r["mean_loss"]},
        {"field": "time", "value": f"{r['seconds']:.1f} s"},
    ]
    for kind, load in r["router_load"].items():
        rows.append(
            {
                "field": f"router load {kind.rsplit('.', 1)[-1]}",
                "value": " ".join(f"{x:.2f}" for x in load),
            }
        )
    for e in r["evaluations"]:
        if e.get("headline"):
            rows.append({"field": f"eval {e['task']} {e['metric']}", "value": e["value"]})
    _output.emit(fmt, rows, ["field", "value"], title=r["bundle"], data=r)


def _train_progress() -> Any:
    return _output.progress("train")


def train(
    bundle: BundleArg = None,
    recipe: Path | None = RecipeOpt,
    overrides: SetOpt = None,
    task: list[str] | None = typer.Option(
        None,
        "--task",
        "-t",
        help="Task(s) to train on (recipe tasks, dataset paths or builtin:NAME); default: data.datasets.",
    ),
    restart: bool = RestartOpt,
    fmt: FormatOpt = "",
) -> None:
    """Train the head version and append a new immutable version (resumes an interrupted run)."""
    from medqwen_cli.training.run import train_bundle

    fmt = resolve_format(fmt)
    with _train_progress() as bar:
        result = train_bundle(
            bundle,
            tasks=task,
            recipe_path=recipe,
            overrides=overrides or [],
            command=command_line(),
            restart=restart,
            progress_fn=bar,
        )
    _render(fmt, result)


def continue_(
    bundle: BundleArg = None,
    task: str = typer.Option(
        ..., "--task", "-t", help="The next task: a recipe task, a dataset path or builtin:NAME."
    ),
    recipe: Path | None = RecipeOpt,
    overrides: SetOpt = None,
    restart: bool = RestartOpt,
    no_eval: bool = typer.Option(
        False, "--no-eval", help="Skip evaluating every task seen so far."
    ),
    fmt: FormatOpt = "",
) -> None:
    """Train the head on the next task only, append a version, then evaluate every task seen."""
    from medqwen_cli.training.run import continue_bundle

    fmt = resolve_format(fmt)
    with _train_progress() as bar, _output.progress("evaluate") as ebar:
        result = continue_bundle(
            bundle,
            task=task,
            recipe_path=recipe,
            overrides=overrides or [],
            command=command_line(),
            restart=restart,
            evaluate=not no_eval,
            progress_fn=bar,
            eval_progress=ebar,
        )
    _render(fmt, result)

"""`medqwen train` and `medqwen continue`: a new immutable version from the head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medqwen_cli.acceptance.judge import Check
from medqwen_cli.cli import _output
from medqwen_cli.cli._common import (
    FIELDS,
    BundleArg,
    FormatOpt,
    SetOpt,
    command_line,
    read_settings,
    resolve_format,
)

ACCEPT_HINT = (
    "the version is kept; `medqwen report` shows every check. Accept it anyway with `medqwen "
    "accept VERSION --by NAME --reason TEXT`, or name it with --version"
)
RecipeOpt = typer.Option(
    None, "--recipe", "-r", help="Recipe file (default: the recipe stored in the bundle at init)."
)
RestartOpt = typer.Option(
    False, "--restart", help="Discard the checkpoints of an interrupted run and start over."
)
AgainOpt = typer.Option(
    False,
    "--again",
    help="Train the task(s) again although the head version already trained them (a new "
    "version on top of it). Without it, the same command run again (same tasks, same resolved "
    "recipe) trains nothing: it completes what that run left (continue's evaluation, the "
    "--watch curve) or says there is nothing left; other settings for a task the head trained "
    "are refused.",
)
WatchOpt = typer.Option(
    None,
    "--watch",
    "-w",
    help="Task to score while training (repeatable), on its eval records as `medqwen evaluate` "
    "scores them, at step 0, every --eval-every steps and at the last step: a forgetting curve. "
    "The points go to the result and, with the new version id and step/steps fields, to "
    "evals.jsonl (never into the accuracy matrix).",
    show_default=False,
)
EvalEveryOpt = typer.Option(
    None,
    "--eval-every",
    min=1,
    help="Optimizer steps between two points of the --watch curve (default 10; needs --watch).",
    show_default=False,
)


def _run_args(
    ctx: typer.Context,
    recipe: Path | None,
    overrides: list[str] | None,
    restart: bool,
    again: bool,
    watch: list[str] | None,
    eval_every: int | None,
) -> dict[str, Any]:
    """The options train and continue share, as the keyword arguments of train_bundle and
    continue_bundle (--eval-every without --watch is refused here, before anything runs)."""
    if eval_every is not None and not watch:
        raise typer.BadParameter(
            "needs --watch TASK (the task to score every N steps)", param_hint="--eval-every"
        )
    return {
        "recipe_path": recipe,
        "overrides": overrides or [],
        "command": command_line(ctx),
        "restart": restart,
        "again": again,
        "watch": watch or None,
        "eval_every": eval_every,
        "curve_fn": _curve_note,
    }


def _curve_note(points: list[dict[str, Any]]) -> None:
    """One stderr line per scored step of the watch (results stay on stdout)."""
    if points:
        scores = ", ".join(
            f"{p['task']} {p['metric']} " + ("n/a" if p["value"] is None else f"{p['value']:.4f}")
            for p in points
        )
        _output.note(f"watch step {points[0]['step']}/{points[0]['steps']}: {scores}")


def _curve_table(curves: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows: one per step; columns: step, then each watched task's headline score."""
    columns = ["step"]
    rows: dict[int, dict[str, Any]] = {}
    for p in curves:
        column = f"{p['task']} ({p['metric']})"
        if column not in columns:
            columns.append(column)
        rows.setdefault(p["step"], {"step": p["step"]})[column] = p["value"]
    return [rows[k] for k in sorted(rows)], columns


def _render(fmt: str, result: Any) -> None:
    r = result.to_dict()
    for line in r["notes"]:  # tasks the evaluations left out: said, not failed (kept under -q)
        _output.note(f"note: {line}", warning=True)
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
        {"field": "precision", "value": f"{r['precision']} (base weights {r['dtype']})"},
    ]
    c = r["continual"]
    if c and c["strategy"] == "replay":
        rows.append({"field": "strategy", "value": _replay_line(c)})
    elif c and c["strategy"] == "protect":
        rows.append({"field": "strategy", "value": _protect_line(c)})
        if c.get("replay"):  # protect and replay together
            rows.append({"field": "strategy", "value": _replay_line(c["replay"])})
    for kind, load in r["router_load"].items():
        rows.append(
            {
                "field": f"router load {kind.rsplit('.', 1)[-1]}",
                "value": " ".join(f"{x:.2f}" for x in load),
            }
        )
    for e in r["evaluations"]:  # continue scores the parent on the new task, then the version
        if e.get("headline"):
            who = e["version"] if e["version"] == r["version"] else f"{e['version']} (parent)"
            rows.append({"field": f"eval {who} {e['task']} {e['metric']}", "value": e["value"]})
    verdict = r["acceptance"]
    if verdict is not None:  # the recipe's acceptance criteria, judged on the scores above
        status = "NOT accepted" if verdict["status"] == "not accepted" else verdict["status"]
        rows.append({"field": "acceptance", "value": f"{status}; default version "
                     f"{verdict['default_version']}"})  # fmt: skip
        rows += [{"field": "  criterion", "value": Check(**c).line()} for c in verdict["checks"]]
    tables = [_output.Rows(rows, FIELDS, title=r["bundle"])]
    if r["curves"]:  # CSV keeps the first table: the curve is in --format json
        curve_rows, columns = _curve_table(r["curves"])
        title = f"forgetting curve: headline score while training {r['version']} on "
        tables.append(_output.Rows(curve_rows, columns, title=title + ", ".join(r["tasks"])))
    _output.emit(fmt, tables, data=r)


def _train_progress() -> Any:
    return _output.TrainProgress()


def train(
    ctx: typer.Context,
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
    again: bool = AgainOpt,
    watch: list[str] | None = WatchOpt,
    eval_every: int | None = EvalEveryOpt,
    fmt: FormatOpt = "",
) -> None:
    """Train the head version and append a new immutable version (resumes an interrupted run;
    the same command again once its version exists trains nothing without --again). With
    acceptance criteria in the recipe, the version is scored and judged, as continue does."""
    from medqwen_cli.training.run import train_bundle

    run_args = _run_args(ctx, recipe, overrides, restart, again, watch, eval_every)
    fmt = resolve_format(fmt)
    settings = read_settings()
    with _train_progress() as bar:
        result = train_bundle(bundle, tasks=task, progress_fn=bar, settings=settings, **run_args)
    _render(fmt, result)
    _exit_if_not_accepted(result)


def continue_(
    ctx: typer.Context,
    bundle: BundleArg = None,
    task: str = typer.Option(
        ..., "--task", "-t", help="The next task: a recipe task, a dataset path or builtin:NAME."
    ),
    recipe: Path | None = RecipeOpt,
    overrides: SetOpt = None,
    restart: bool = RestartOpt,
    again: bool = AgainOpt,
    no_eval: bool = typer.Option(
        False, "--no-eval", help="Skip evaluating every task seen so far."
    ),
    watch: list[str] | None = WatchOpt,
    eval_every: int | None = EvalEveryOpt,
    replay: float | None = typer.Option(
        None,
        "--replay",
        min=0.0,
        max=0.9,
        help="Replay: this share of every batch (at least one record) comes from the train "
        "data of the lineage's earlier tasks, equal weight per task; the data is read where the "
        "recipe defines it, never copied (sets continual.replay; a fixed buffer of N records per "
        "task: --set continual.replay_per_task=N). See docs/continual.md.",
        show_default=False,
    ),
    protect: bool = typer.Option(
        False,
        "--protect",
        help="Protected branches: freeze every adapter trained so far and train a new branch "
        "per layer that cannot move the outputs of the earlier tasks' layer inputs (up to "
        "continual.protect_energy of their energy; a layer with no room keeps the directions "
        "worth most and says so); the version stores its task's input basis, so the next "
        "--protect needs no old data (sets continual.protect). See docs/continual.md.",
    ),
    fmt: FormatOpt = "",
) -> None:
    """Train the head on the next task only, append a version, then evaluate every task seen.
    With --watch A, task A is scored every --eval-every steps while training (a forgetting curve).
    With --replay F, earlier tasks' records fill a share F of every batch; with --protect, a
    new branch learns the task outside the earlier tasks' input subspace; with both, that
    branch trains on the mixed batches. Stopped after its
    version was written, the same command again completes the evaluation and trains nothing.
    A version that misses the recipe's acceptance criteria is kept but does not become the
    default version, and the command exits 3 (docs/report.md).
    """
    from medqwen_cli.training.run import continue_bundle

    if replay is not None:  # after --set: the option is what was typed last
        overrides = [*(overrides or []), f"continual.replay={replay}"]
    if protect:
        overrides = [*(overrides or []), "continual.protect=true"]
    run_args = _run_args(ctx, recipe, overrides, restart, again, watch, eval_every)
    fmt = resolve_format(fmt)
    settings = read_settings()
    with _train_progress() as bar, _output.progress("evaluate") as ebar:
        result = continue_bundle(
            bundle,
            task=task,
            evaluate=not no_eval,
            progress_fn=bar,
            eval_progress=ebar,
            settings=settings,
            **run_args,
        )
    _render(fmt, result)
    _exit_if_not_accepted(result)


def _exit_if_not_accepted(result: Any) -> None:
    """A version that failed the recipe's acceptance criteria: one error line, its own code."""
    if result.acceptance is not None and result.acceptance["status"] == "not accepted":
        from medqwen_cli.acceptance import EXIT_NOT_ACCEPTED, failure_line

        _output.error(failure_line(result.acceptance), ACCEPT_HINT)
        raise typer.Exit(EXIT_NOT_ACCEPTED)


def _replay_line(c: dict) -> str:
    """One line on a replay: the share actually replayed (ceil(f * batch), at least one record
    per batch) and the pools it drew from."""
    pools = ", ".join(f"{t} ({n} records)" for t, n in c["tasks"].items())
    return (
        f"replay {c['replay']}: {c['replayed_per_batch']} of {c['batch_size']} records per batch "
        f"({c['replayed_per_batch'] / c['batch_size']:.1%}) from {pools}"
    )


def _protect_line(c: dict) -> str:
    """One line on a protected run: what it kept out, its branch, the bases, the leak."""
    if not c["protected_tasks"]:
        what = "nothing to protect yet (no earlier task)"
    else:
        sources = ", ".join(f"{t} from {s}" for t, s in c["bases_from"].items()
                            if t in c["protected_tasks"])  # fmt: skip
        lo, hi = c["basis_share"]
        what = (
            f"branch {c['branches']} kept out of the inputs of {sources} "
            f"(energy {c['protect_energy']}; bases {lo:.0%}-{hi:.0%} of each layer's inputs)"
        )
        least = c.get("least_held") or {}
        if least:
            what += "; least energy kept per task " + ", ".join(
                f"{t} {v:.3f}" for t, v in least.items()
            )
        inside = c.get("new_task_energy_in_bases")
        if inside:
            what += f"; {inside[0]:.0%}-{inside[1]:.0%} of the new task's input energy lies inside"
    if c.get("protect_exclude"):
        what += (
            f"; no branch at {' '.join(c['protect_exclude'])} "
            f"({c['branched_layers']} layers branched)"
        )
    return f"protect: {what}; this task's basis is stored for the next --protect"

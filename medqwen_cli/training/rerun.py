"""Running `train` or `continue` again, when the head version already trained the run's tasks.

A version records its parent, its tasks and the resolved recipe it trained with. Before a run
plans anything, `find_rerun` compares the head with it:

    none of the tasks   the head trained none of the run's tasks: the run trains (unless a
                        version it wrote from the head before was held back from the default
                        by its acceptance criteria: that version is the same run, as below)
    the same run        the head trained exactly the run's tasks with the same resolved recipe
                        (what the run key hashes, the parent aside: the head's parent is where
                        the run started): the command ran before. Running it again trains
                        nothing and completes what that run left (`complete_rerun`): the
                        --watch curve when it stopped after the version was written, and
                        `continue`'s evaluation when it stopped while scoring (only the cells
                        evals.jsonl lacks, so none is scored twice); with nothing left it says
                        so in one note
    another run         the head trained one of the tasks with another recipe, or beside other
                        tasks: refused (`AlreadyTrained`), naming the version and what differs
    --again             the tasks train again in every case, a new version on top of the head

`train` and `continue` train the same version from the same parent, tasks and recipe (their
kind only names the work directory), so either completes the other's run.

`interrupted_run` is the Ctrl-C report of a run outside its training loop (the loop reports the
step it stopped after): nothing written and the step a rerun resumes from, or the version
written, what is left of the run and the command that completes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import AlreadyTrained, Interrupted
from medqwen_cli.recipe import Recipe, recipe_to_dict
from medqwen_cli.settings import Settings
from medqwen_cli.training.plan import check_tasks, resolve_recipe, task_names, task_specs
from medqwen_cli.training.publish import remove_run_dir
from medqwen_cli.training.result import TrainResult
from medqwen_cli.training.scores import lineage_left, score_lineage, score_parent

METRICS_FILE = "metrics.json"  # the run's TrainResult, in every trained version


@dataclass
class Rerun:
    """The run the head version is: its command ran before."""

    version: str  # the head
    parent: str | None  # where that run started
    tasks: list[str]
    recipe: Recipe
    run_dir: Path  # that run's work directory: a --watch curve not yet published, if any


def find_rerun(
    bundle: Bundle,
    *,
    tasks: list[str],
    recipe_path: str | Path | None,
    overrides: list[str],
    kind: str,
    again: bool,
) -> Rerun | None:
    """The version that is this run done before (see the module docstring): the head, or a
    version written from the head that is not the default (its acceptance criteria failed);
    None when the run is to train. Refuses, without --again, a run whose tasks the head trained
    another way. An unknown or gone task fails here, as in `plan_run`."""
    recipe = resolve_recipe(bundle, recipe_path, overrides)
    check_tasks(bundle, recipe, tasks)
    task_specs(recipe, tasks)
    names = task_names(recipe, tasks)
    if bundle.head is None or again:
        return None
    head = bundle.entry(bundle.head)
    recipe_data = recipe_to_dict(recipe)
    run = (names, recipe, recipe_data, kind)
    # a version this run wrote from the head that is not the default (acceptance held it back)
    held = [e for e in bundle.manifest.versions if e.parent == head.id]
    done = next((r for e in reversed(held) if (r := _as_run(bundle, e, *run)) is not None), None)
    learned = [t for t in names if t in head.tasks]
    if done is None and learned:
        done = _as_run(bundle, head, *run)
    if done is not None or learned:  # a damaged lineage stops here, as in plan_run
        bundle.check_version(done.version if done is not None else head.id)
    if done is not None or not learned:
        return done
    changed = recipe_changes(bundle.read_version_info(head.id).recipe, recipe_data)
    how = []
    if head.tasks != names:
        how.append(f"with its tasks {', '.join(head.tasks)}")
    if changed:
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        how.append(f"with another recipe: {', '.join(changed[:4])}{more} differ")
    what = ", ".join(learned)
    raise AlreadyTrained(
        f"{head.id}, the head version, already trained {what} ({'; '.join(how)})",
        f"add --again to train {what} again, as a new version on top of {head.id}",
        version=head.id,
    )


def _as_run(
    bundle: Bundle,
    entry: Any,
    names: list[str],
    recipe: Recipe,
    recipe_data: dict[str, Any],
    kind: str,
) -> Rerun | None:
    """Version `entry` as the run on `names` with `recipe_data`, done before; None when it
    trained other tasks or with another recipe."""
    from medqwen_cli.training.checkpoint import run_key

    if entry.tasks != names:
        return None
    if recipe_changes(bundle.read_version_info(entry.id).recipe, recipe_data):
        return None
    key = run_key(entry.parent, names, recipe_data, kind)
    return Rerun(entry.id, entry.parent, names, recipe, bundle.work_dir / key)


def recipe_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted fields where two resolved recipes differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            path
            for key in sorted(set(old) | set(new))
            for path in recipe_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".") or "recipe"]


def complete_rerun(
    bundle: Bundle,
    rerun: Rerun,
    *,
    evaluate: bool,
    settings: Settings,
    command: str,
    progress: Any = None,
) -> TrainResult:
    """What the run `rerun` left, done without training: its --watch curve into evals.jsonl,
    and with `evaluate` (`continue`) the parent's cell on the task and the version's cells on
    every task seen, those evals.jsonl lacks. Returns the version's result (metrics.json, its
    curve and cells) with one note saying what was done. Only the main process of a launch
    writes; Ctrl-C says what is still left."""
    from accelerate import PartialState

    done: list[str] = []
    notes: list[str] = []
    try:
        if PartialState().is_main_process:
            steps = publish_curve(bundle, rerun.version, rerun.run_dir)
            if steps:
                done.append(f"its --watch curve ({steps} steps)")
            if evaluate:
                done += _evaluate(bundle, rerun, settings, progress, notes)
    except KeyboardInterrupt:
        ids = [e.id for e in bundle.manifest.versions]
        raise interrupted_run(
            bundle.root, since=ids.index(rerun.version), parent=rerun.parent, tasks=rerun.tasks,
            run_dir=rerun.run_dir, recipe=rerun.recipe, evaluate=evaluate, command=command,
        ) from None  # fmt: skip
    result = stored_result(bundle, rerun.version, evaluations=evaluate)
    what = ", ".join(rerun.tasks)
    again = f"--again trains {what} again as a new version"
    if done:
        note = (
            f"{rerun.version} already trained {what} with this recipe; completed what its run "
            f"left: {'; '.join(done)} (nothing trained; {again})"
        )
    else:
        note = (
            f"{rerun.version} already trained {what} with this recipe: nothing left to do ({again})"
        )
    result.notes = [note, *dict.fromkeys(notes)]
    return result


def _evaluate(
    bundle: Bundle, rerun: Rerun, settings: Settings, progress: Any, notes: list[str]
) -> list[str]:
    """`continue`'s scores the run left (see `complete_rerun`); what was scored, and the
    evaluations' notes into `notes`."""
    left = lineage_left(bundle, rerun.version, rerun.recipe)
    check_tasks(bundle, rerun.recipe, left, instead="rerun with --no-eval (it scores them)")
    done = []
    for task in rerun.tasks:
        before = score_parent(
            bundle, rerun.parent, task, recipe=rerun.recipe, settings=settings, progress=progress
        )
        if before is not None:
            notes += before.notes
            if before.tasks:
                done.append(f"the parent {rerun.parent} on {task}")
    after = score_lineage(
        bundle, rerun.version, recipe=rerun.recipe, settings=settings, progress=progress
    )
    if after is not None:
        notes += after.notes
        if after.tasks:
            done.append(f"its evaluation on {', '.join(t.task for t in after.tasks)}")
    return done


def publish_curve(bundle: Bundle, version: str, run_dir: Path) -> int:
    """The --watch curve buffered in `run_dir` into evals.jsonl, stamped `version`, unless it is
    there already; then the work directory goes. Returns the number of steps appended."""
    from medqwen_cli.training.watch import CURVE_FILE

    file = run_dir / CURVE_FILE
    lines = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
    rows = sorted((json.loads(line) for line in lines if line.strip()), key=lambda r: r["step"])
    if rows and _curve_published(bundle, version):
        rows = []
    bundle.append_evals([{**row, "version": version} for row in rows])
    if run_dir.exists():
        remove_run_dir(bundle, run_dir)
    return len({row["step"] for row in rows})


def _curve_published(bundle: Bundle, version: str) -> bool:
    return any(r.get("version") == version and r.get("step") is not None
               for r in bundle.read_evals())  # fmt: skip


def stored_result(bundle: Bundle, version: str, *, evaluations: bool) -> TrainResult:
    """The result of the run that wrote `version`: its metrics.json, its --watch curve, and with
    `evaluations` its cells and its parent's on its tasks, as evals.jsonl holds them now."""
    from medqwen_cli.training.watch import headline_points

    train = bundle.read_json(METRICS_FILE, version)["train"]
    kept = {f.name for f in fields(TrainResult)} - {"evaluations", "notes", "curves"}
    result = TrainResult(**{k: v for k, v in train.items() if k in kept})
    result.version = version
    rows = bundle.read_evals()
    result.curves = headline_points(
        [r for r in rows if r.get("version") == version and r.get("step") is not None]
    )
    if evaluations:
        cells = [
            r for r in rows
            if r.get("step") is None and (r.get("version") == version or (
                r.get("version") == result.parent and r.get("task") in result.tasks))
        ]  # fmt: skip
        latest = {(r["version"], r["task"], r["metric"]): r for r in cells}
        result.evaluations = list(latest.values())
    return result


def interrupted_run(
    root: Path,
    *,
    since: int,
    parent: str | None,
    tasks: list[str],
    run_dir: Path,
    recipe: Recipe,
    evaluate: bool,
    command: str,
) -> Interrupted:
    """The report of Ctrl-C during a run from `parent` on `tasks`, outside its training loop:
    whether the version was written (the bundle read again: one from `parent` on `tasks` after
    the first `since` versions), what is left, how to go on."""
    from medqwen_cli.training.checkpoint import latest_checkpoint
    from medqwen_cli.training.watch import CURVE_FILE

    bundle = Bundle.open(root)
    mine = [e for e in bundle.manifest.versions[since:] if (e.parent, e.tasks) == (parent, tasks)]
    if not mine:
        last = latest_checkpoint(run_dir)
        where = (
            f"resume from step {int(last.name.removeprefix('ckpt-'))}" if last else "start again"
        )
        return Interrupted(
            f"interrupted before the version of {', '.join(tasks)} was written: nothing was "
            "written",
            f"rerun the same command to {where} (or add --restart to start over): {command}",
        )
    newest = mine[-1]
    left = []
    if (run_dir / CURVE_FILE).is_file() and not _curve_published(bundle, newest.id):
        left.append("its --watch curve")
    scores = lineage_left(bundle, newest.id, recipe) if evaluate else []
    if scores:
        left.append(f"its evaluation on {', '.join(scores)}")
    written = (
        f"interrupted after {newest.id} was written (trained on {', '.join(tasks)} from {parent})"
    )
    if not left:
        return Interrupted(f"{written}; nothing of the run is left", "`medqwen log` shows it")
    return Interrupted(
        f"{written}; left: {'; '.join(left)}",
        f"rerun the same command to complete {newest.id} without training again: {command}",
    )

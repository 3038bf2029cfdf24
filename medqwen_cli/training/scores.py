"""The scores of a `continue` run: the parent on the new task before, every task seen after.

Both append their rows to the bundle's evals.jsonl as `medqwen evaluate` does, so the
forgetting matrix fills itself: R[i-1][i] (the parent on the new task, what forward transfer
needs) once per cell, and the new version's row over its lineage's tasks and `eval.tasks`.
Each scores only the cells evals.jsonl lacks, so a run interrupted while scoring and run again
(training/rerun.py) fills in what is left, never a cell twice. A task without eval records is
left out and said in the result's notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medqwen_cli.bundle import Bundle

if TYPE_CHECKING:
    from medqwen_cli.evaluation.api import EvaluationResult
    from medqwen_cli.recipe import Recipe
    from medqwen_cli.settings import Settings


def scored_cells(bundle: Bundle) -> set[tuple[str, str]]:
    """(version, task) of every cell evals.jsonl holds (curve points are not cells)."""
    return {
        (r.get("version"), r.get("task"))
        for r in bundle.read_evals()
        if r.get("headline") and r.get("step") is None
    }


def lineage_left(bundle: Bundle, version: str, recipe: Recipe) -> list[str]:
    """The tasks of `version`'s lineage and `eval.tasks` that have no cell of `version` yet
    (a task without eval records never has one: scoring it again only repeats its note)."""
    seen = bundle.read_version_info(version).lineage_tasks
    done = scored_cells(bundle)
    tasks = dict.fromkeys([*seen, *(recipe.eval.tasks or [])])
    return [t for t in tasks if (version, t) not in done]


def score_parent(
    bundle: Bundle,
    parent: str | None,
    task: str,
    *,
    recipe: Recipe,
    settings: Settings,
    progress: Any = None,
) -> EvaluationResult | None:
    """`parent`'s evaluation on `task` (its rows appended to evals.jsonl), or None when the
    parent trained no task or its cell is already there. A task without eval records is not
    scored: the result has no rows and says so in its notes."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    if parent is None or not bundle.entry(parent).tasks:
        return None
    if (parent, task) in scored_cells(bundle):
        return None
    return evaluate_bundle(
        bundle, version=parent, tasks=[task], recipe=recipe, progress=progress,
        settings=settings, empty_ok=True,
    )  # fmt: skip


def score_lineage(
    bundle: Bundle,
    version: str,
    *,
    recipe: Recipe,
    settings: Settings,
    progress: Any = None,
) -> EvaluationResult | None:
    """`version`'s evaluation on every task of its lineage and eval.tasks that has no cell yet
    (its rows appended to evals.jsonl; tasks without eval records left out, in its notes), or
    None when every one has its cell; `bundle` is the one `publish` appended the version to."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    left = lineage_left(bundle, version, recipe)
    if not left:
        return None
    return evaluate_bundle(
        bundle, version=version, tasks=left, recipe=recipe, progress=progress,
        settings=settings, empty_ok=True,
    )  # fmt: skip

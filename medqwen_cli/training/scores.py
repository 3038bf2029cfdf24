"""The scores of a `continue` run: the parent on the new task before, every task seen after.

Both append their rows to the bundle's evals.jsonl as `medqwen evaluate` does, so the
forgetting matrix fills itself: R[i-1][i] (the parent on the new task, what forward transfer
needs) once per cell, and the new version's row over its lineage's tasks and `eval.tasks`.
A task without eval records is left out and said in the result's notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medqwen_cli.bundle import Bundle

if TYPE_CHECKING:
    from medqwen_cli.evaluation.api import EvaluationResult
    from medqwen_cli.training.plan import TrainPlan


def score_parent(
    plan: TrainPlan, bundle: Bundle, task: str, progress: Any = None
) -> EvaluationResult | None:
    """The parent's evaluation on `task` (its rows appended to evals.jsonl), or None when the
    parent trained no task or its cell is already there. A task without eval records is not
    scored: the result has no rows and says so in its notes."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    if plan.parent is None or not bundle.entry(plan.parent).tasks:
        return None
    done = {
        (r.get("version"), r.get("task"))
        for r in bundle.read_evals()
        if r.get("headline") and r.get("step") is None  # curve points are not cells
    }
    if (plan.parent, task) in done:
        return None
    return evaluate_bundle(
        bundle, version=plan.parent, tasks=[task], recipe=plan.recipe, progress=progress,
        settings=plan.settings, empty_ok=True,
    )  # fmt: skip


def score_lineage(
    plan: TrainPlan, bundle: Bundle, version: str, progress: Any = None
) -> EvaluationResult:
    """`version`'s evaluation on every task of its lineage and eval.tasks (its rows appended to
    evals.jsonl; tasks without eval records left out, in its notes); `bundle` is the one
    `publish` appended the version to."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    seen = bundle.read_version_info(version).lineage_tasks
    seen = list(dict.fromkeys([*seen, *(plan.recipe.eval.tasks or [])]))
    return evaluate_bundle(
        bundle, version=version, tasks=seen, recipe=plan.recipe, progress=progress,
        settings=plan.settings, empty_ok=True,
    )  # fmt: skip

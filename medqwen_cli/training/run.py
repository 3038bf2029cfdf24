"""`train` and `continue`: from a bundle's head to a new immutable version, in five phases.

plan     training/plan.py: the head checked, the recipe resolved (the adapter structure must
         match the bundle's; training-only fields may change), the tasks' datasets, the watch,
         precision and dtype for the device, the run key; all before a model loads
data     the datasets' records and the regime sampler, sharded for this process
model    the parent version applied to its base (fingerprint checked), with the recipe's
         dropout and gradient checkpointing
fit      training/loop.py: the accelerate loop, resuming from <bundle>/work/<run key>/ after a
         crash; with a watch, the watched tasks are scored on the model in training at steps 0,
         every `eval_every` and the last (training/watch.py), buffered in the work directory
publish  training/publish.py: adapter + metrics.json + train_log.jsonl as a new version (main
         process only); nothing is written to versions/ unless training finished; then the
         watch's rows go to evals.jsonl, stamped with the new version id (so they never name a
         missing version)

The run's continual strategy (`plan.strategy`, continual/) takes part through its phases: it
wraps the data's sampler, prepares the loaded model, runs after every optimizer step, finishes
on the trained model, and gives the version its record and files. Nothing here names a strategy.

`train_bundle` runs the five in a row; `continue_bundle` scores the parent on the new task
between plan and data, and the new version on every task of its lineage after publish
(training/scores.py) (a task without eval records is left out of the scores, and said once in
`TrainResult.notes`). Each opens the bundle once; the processes other than the main one open it
again after publish, to read the version the main process wrote.

Before the plan, the head is compared with the run (training/rerun.py): when the head is this
very run (the same tasks and resolved recipe), the command ran before, and running it again
completes what it left (a --watch curve, `continue`'s evaluation) instead of training again; a
head that trained one of the tasks another way is refused without `again`. Ctrl-C outside the
loop says whether the version was written, what is left and the command that completes it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli.acceptance import judge_run
from medqwen_cli.bundle import Bundle, find_bundle
from medqwen_cli.errors import Interrupted, TrainingError
from medqwen_cli.settings import Settings
from medqwen_cli.training.data import TrainData, load_data
from medqwen_cli.training.plan import (  # noqa: F401  (re-exported: imported from here elsewhere)
    DEFAULT_EVERY,
    TrainPlan,
    check_tasks,
    check_watch,
    plan_run,
    resolve_recipe,
    task_names,
    task_specs,
    training_precision,
)
from medqwen_cli.training.publish import publish
from medqwen_cli.training.rerun import complete_rerun, find_rerun, interrupted_run
from medqwen_cli.training.result import TrainResult
from medqwen_cli.training.scores import score_lineage, score_parent

if TYPE_CHECKING:  # torch loads inside the phases, after the bundle, recipe and task checks
    from medqwen_cli.loading import AdaptedModel
    from medqwen_cli.training.loop import FitResult, ProgressFn
    from medqwen_cli.training.watch import CurveFn, Watch


# --------------------------------------------------------------------------- drivers


def train_bundle(
    bundle_path: str | Path | None,
    *,
    tasks: list[str] | None = None,
    recipe_path: str | Path | None = None,
    overrides: list[str] | None = None,
    command: str = "medqwen train",
    restart: bool = False,
    again: bool = False,
    progress_fn: ProgressFn | None = None,
    kind: str = "train",
    watch: list[str] | None = None,
    eval_every: int | None = None,
    curve_fn: CurveFn | None = None,
    settings: Settings | None = None,
) -> TrainResult:
    """Train the head on the tasks' datasets and append the result as a new version.

    `watch` names tasks scored on the model in training at step 0, every `eval_every` steps
    (default 10) and at the last step, as `medqwen evaluate` scores them; the points are
    `result.curves` and lines of evals.jsonl with `step`/`steps` (see training/watch.py).
    `curve_fn` gets each step's headline points as they come (main process).
    `settings` (default: `Settings.from_env()`): the default bundle and the data cache.
    With acceptance criteria in the recipe, the new version is scored on every task of its
    lineage (as `continue` scores it) and judged (acceptance/).
    `again`: train the tasks although the head trained them (training/rerun.py); without it,
    the same run again completes what it left and trains nothing (the result is the head's,
    with a note), and a head that trained one of the tasks another way is refused.
    """
    settings = settings if settings is not None else Settings.from_env()
    bundle = Bundle.open(find_bundle(bundle_path, settings))  # the one open of the run
    tasks, overrides = list(tasks or []), list(overrides or [])
    rerun = find_rerun(
        bundle, tasks=tasks, recipe_path=recipe_path, overrides=overrides, kind=kind, again=again
    )
    if rerun is not None:
        return complete_rerun(bundle, rerun, evaluate=False, settings=settings, command=command)
    plan = plan_run(
        bundle, tasks=tasks, recipe_path=recipe_path, overrides=overrides,
        watch=watch, eval_every=eval_every, kind=kind, settings=settings,
    )  # fmt: skip
    accelerator = make_accelerator(plan, bundle)
    since = len(bundle.manifest.versions)  # a version after these is this run's
    judged = plan.recipe.acceptance.in_force()  # criteria: score what they need, then judge
    try:
        result = run_plan(
            plan, bundle, accelerator, command=command, restart=restart, progress_fn=progress_fn,
            curve_fn=curve_fn,
        )  # fmt: skip
        if judged and accelerator.is_main_process and result.version:
            scored = score_lineage(bundle, result.version, recipe=plan.recipe, settings=settings)
            result.evaluations, result.notes = scored.records, [*result.notes, *scored.notes]
    except KeyboardInterrupt:  # outside the loop, which reports its own step
        raise interrupted(plan, bundle, since, evaluate=judged, command=command) from None
    if judged:
        result.acceptance = judge_run(
            plan.recipe, bundle, result.version, main=accelerator.is_main_process
        )
    return result


def continue_bundle(
    bundle_path: str | Path | None,
    *,
    task: str,
    recipe_path: str | Path | None = None,
    overrides: list[str] | None = None,
    command: str = "medqwen continue",
    restart: bool = False,
    again: bool = False,
    evaluate: bool = True,
    progress_fn: ProgressFn | None = None,
    eval_progress: Any = None,
    watch: list[str] | None = None,
    eval_every: int | None = None,
    curve_fn: CurveFn | None = None,
    settings: Settings | None = None,
) -> TrainResult:
    """The next task of a sequence: train the head on `task` only, then evaluate every task seen.

    With evaluation on, the parent is first scored on the new task (once: the cell R[i-1][i] that
    forward transfer needs) when the parent trained a task itself, and after training the new
    version is scored on every task of its lineage (and `eval.tasks`), so the forgetting matrix
    fills itself. A task without eval records (a single data file holds its training split
    only) is not scored: `result.notes` says so, once per task. `watch` / `eval_every` /
    `curve_fn`: a forgetting curve, as in `train_bundle` (independent of `evaluate`; a watched
    task must have eval records). Only the main process scores; the others only train.
    `settings`, `again`: as in `train_bundle`; the same run again scores the cells it left.
    """
    settings = settings if settings is not None else Settings.from_env()
    bundle = Bundle.open(find_bundle(bundle_path, settings))  # the one open of the run
    overrides = list(overrides or [])
    rerun = find_rerun(
        bundle, tasks=[task], recipe_path=recipe_path, overrides=overrides, kind="continue",
        again=again,
    )  # fmt: skip
    if rerun is not None:
        result = complete_rerun(
            bundle, rerun, evaluate=evaluate, settings=settings, command=command,
            progress=eval_progress,
        )  # fmt: skip
        result.acceptance = judge_run(rerun.recipe, bundle, rerun.version)  # on the cells now in
        return result
    plan = plan_run(
        bundle, tasks=[task], recipe_path=recipe_path, overrides=overrides,
        watch=watch, eval_every=eval_every, kind="continue", settings=settings,
    )  # fmt: skip
    if evaluate:  # every task seen is scored after training: a gone one fails before it
        seen = bundle.read_version_info(bundle.head).lineage_tasks if bundle.head else []
        seen = [*seen, *(plan.recipe.eval.tasks or [])]
        check_tasks(bundle, plan.recipe, seen, instead="continue with --no-eval (it scores them)")
    accelerator = make_accelerator(plan, bundle)
    evaluate = evaluate and accelerator.is_main_process
    scores = {"recipe": plan.recipe, "settings": settings, "progress": eval_progress}
    since = len(bundle.manifest.versions)  # a version after these is this run's
    try:
        scored = [score_parent(bundle, plan.parent, task, **scores)] if evaluate else []
        result = run_plan(
            plan, bundle, accelerator, command=command, restart=restart,
            progress_fn=progress_fn, curve_fn=curve_fn,
        )  # fmt: skip
        if evaluate and result.version:
            scored.append(score_lineage(bundle, result.version, **scores))
    except KeyboardInterrupt:  # outside the loop, which reports its own step
        raise interrupted(plan, bundle, since, evaluate=evaluate, command=command) from None
    done = [e for e in scored if e is not None]
    result.evaluations = [line for e in done for line in e.records]
    # the new task is in both evaluations: its note, the same line, is kept once
    result.notes = list(dict.fromkeys([*result.notes, *(note for e in done for note in e.notes)]))
    result.acceptance = judge_run(
        plan.recipe, bundle, result.version, main=accelerator.is_main_process
    )
    return result


def run_plan(
    plan: TrainPlan,
    bundle: Bundle,
    accelerator: Any,
    *,
    command: str,
    restart: bool = False,
    progress_fn: ProgressFn | None = None,
    curve_fn: CurveFn | None = None,
) -> TrainResult:
    """The phases after the plan: work directory, data, model, fit, publish; the new version."""
    start_run(plan, bundle, accelerator, restart=restart)
    data = load_data(plan, accelerator)
    loaded = load_model(plan, bundle, accelerator)
    strategy = plan.strategy
    strategy.prepare(
        loaded.model, bundle=bundle, processor=loaded.processor, device=accelerator.device
    )
    batches = data.batches(loaded.processor, plan.recipe.train)
    watch = make_watch(plan, loaded.processor, curve_fn if accelerator.is_main_process else None)
    try:
        result = fit_plan(
            plan, loaded.model, batches, data, accelerator, watch=watch,
            progress_fn=progress_fn if accelerator.is_main_process else None,
        )  # fmt: skip
    except Interrupted as stop:  # the loop names the step; the command that resumes goes with it
        stop.hint = f"{stop.hint}: {command}"
        raise
    strategy.finish(loaded.model, data.new)
    summary = summarize(plan, bundle, result, loaded.model)
    summary.notes += strategy.notes()
    publish(plan, bundle, accelerator, loaded.model, summary, watch, data, command=command)
    if plan.recipe.train.trackers:  # flushes the trackers; it also ends the process group: last
        accelerator.end_training()
    return summary


# --------------------------------------------------------------------------- phases


def make_accelerator(plan: TrainPlan, bundle: Bundle) -> Any:
    """The run's Accelerator, with the plan's precision and trackers (logs in <bundle>/logs).

    It knows this process's rank: only the main process writes the bundle and scores.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(
        cpu=plan.device == "cpu",
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[plan.precision],
        log_with=list(plan.recipe.train.trackers) or None,
        project_dir=str(bundle.root / "logs"),
    )
    if plan.watch:
        _check_watch_engine(accelerator)
    return accelerator


def start_run(plan: TrainPlan, bundle: Bundle, accelerator: Any, *, restart: bool) -> None:
    """Start the trackers; with `restart`, discard the run's checkpoints (main process)."""
    if plan.recipe.train.trackers:
        accelerator.init_trackers(
            f"{plan.kind}-{plan.key}",
            config={"parent": str(plan.parent), "tasks": ",".join(plan.tasks)},
        )
    if restart and accelerator.is_main_process and plan.run_dir.exists():
        shutil.rmtree(plan.run_dir)
    accelerator.wait_for_everyone()


def load_model(plan: TrainPlan, bundle: Bundle, accelerator: Any) -> AdaptedModel:
    """The parent version on its base in the plan's dtype on this process's device, with the
    recipe's adapter dropout, gradient checkpointing if asked, and router statistics zeroed."""
    from medqwen_cli.adapters import reset_router_stats
    from medqwen_cli.loading import load_adapted

    cfg = plan.recipe.train
    loaded = load_adapted(  # the recipe's training fields (dropout, its masks) on the layers
        bundle, plan.parent, dtype=plan.dtype, device=str(accelerator.device),
        adapter=plan.recipe.adapter, cache_dir=plan.settings.cache_dir,
    )  # fmt: skip
    model = loaded.model
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    reset_router_stats(model)
    return loaded


def make_watch(plan: TrainPlan, processor: Any, curve_fn: CurveFn | None) -> Watch | None:
    """The plan's watch (None without watched tasks), buffering in the run's work directory."""
    if not plan.watch:
        return None
    from medqwen_cli.training.watch import Watch

    return Watch(
        plan.recipe, processor, plan.watch, every=plan.eval_every, run_dir=plan.run_dir,
        curve_fn=curve_fn,
    )  # fmt: skip


def fit_plan(
    plan: TrainPlan,
    model: Any,
    batches: Iterator[list[dict]],
    data: TrainData,
    accelerator: Any,
    *,
    watch: Watch | None,
    progress_fn: ProgressFn | None,
) -> FitResult:
    """Trains `model` for the data's steps (training/loop.py), resuming from the plan's run
    directory; returns the loop's counters and timings."""
    from medqwen_cli.training.loop import fit

    return fit(
        model,
        batches,
        data.sampler,
        cfg=plan.recipe.train,
        balance_weight=plan.recipe.adapter.balance_loss,
        total_steps=data.total_steps,
        accelerator=accelerator,
        run_dir=plan.run_dir,
        progress_fn=progress_fn,
        watch=watch,
        after_step=plan.strategy.after_step,
    )


def summarize(
    plan: TrainPlan,
    bundle: Bundle,
    result: FitResult,
    model: Any,
) -> TrainResult:
    """The run's result, before it has a version id: counters, losses, dtypes, router load."""
    from medqwen_cli.adapters import router_load

    p = result.progress
    return TrainResult(
        bundle=str(bundle.root),
        version="",
        parent=plan.parent,
        tasks=plan.tasks,
        steps=p.step,
        samples=p.samples,
        tokens=p.tokens,
        final_loss=p.last_loss,
        mean_loss=p.loss_sum / p.step if p.step else None,
        seconds=round(result.seconds, 3),
        resumed_from=result.resumed_from,
        precision=plan.precision,
        dtype=str(next(p for p in model.parameters() if not p.requires_grad).dtype)[6:],
        router_load=router_load(model),
        continual=plan.strategy.summary(model),
    )  # fmt: skip


# --------------------------------------------------------------------------- helpers


def interrupted(
    plan: TrainPlan, bundle: Bundle, since: int, *, evaluate: bool, command: str
) -> Any:
    """The Ctrl-C report of `plan`'s run outside the training loop (training/rerun.py); the
    bundle had `since` versions when the run began."""
    return interrupted_run(
        bundle.root, since=since, parent=plan.parent, tasks=plan.tasks, run_dir=plan.run_dir,
        recipe=plan.recipe, evaluate=evaluate, command=command,
    )  # fmt: skip


def _check_watch_engine(accelerator: Any) -> None:
    """The watch scores on the main process alone: sharded parameters cannot do that."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    sharded = kind == DistributedType.FSDP or (
        kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3
    )
    if sharded:
        raise TrainingError(
            f"--watch scores the model on the main process alone, which {kind.value} with "
            "sharded parameters cannot do",
            "run the curve with DDP (plain `accelerate launch`) or one process, or leave --watch "
            "out and evaluate the versions afterwards",
        )

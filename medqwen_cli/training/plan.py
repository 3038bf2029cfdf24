"""The plan of a `train` or `continue` run: everything decided before a model loads.

plan_run checks, in this order, and fails on the first problem before any work is done:

    head     the bundle's head version is intact (its files match the manifest)
    recipe   the stored recipe or --recipe, with --set; the adapter's structure must not change
    tasks    the datasets of the requested tasks (or data.datasets) and their regime; a task
             whose data is gone since a version of the lineage trained on it is named so,
             with that version and path (`check_tasks`)
    watch    the watched tasks exist and have an eval split (their records are read here)
    strategy the continual strategy the recipe asks for (continual/), with what it needs of the
             lineage: replay the earlier tasks' train records, checked against the digests
             their versions recorded; protect their stored input bases, or the records to
             compute them from
    device   train.precision and model.dtype can train on the device; trackers are installed
    key      run_key(parent, tasks, resolved recipe, kind): the work directory a crash resumes from

Everything up to `watch` runs without torch, so a typo fails at once; `device` imports it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli.adapters.config import refuse_fixed_changes
from medqwen_cli.bundle import Bundle
from medqwen_cli.continual import DATA_FILE, Strategy, plan_strategy
from medqwen_cli.continual.lineage import earlier_tasks
from medqwen_cli.errors import DataError, RecipeError
from medqwen_cli.recipe import DatasetSpec, Recipe, load_recipe, recipe_to_dict
from medqwen_cli.settings import Settings

if TYPE_CHECKING:
    from medqwen_cli.evaluation.api import TaskData


DEFAULT_EVERY = 10  # steps between two points of a --watch curve


@dataclass
class TrainPlan:
    """What one run trains, checked and resolved; the phases in training/run.py read it."""

    recipe: Recipe
    recipe_data: dict[str, Any]  # the resolved recipe as stored in the version (and keyed)
    parent: str | None  # the head the run starts from
    tasks: list[str]  # task names recorded in the version
    specs: list[DatasetSpec]  # the datasets trained on
    spec_tasks: list[str]  # the task of each dataset in `specs` (data.json)
    strategy: Strategy  # how the run keeps the earlier tasks (none, replay, protect)
    regime: Any  # how the datasets are mixed
    watch: dict[str, TaskData]  # watched task -> its eval records (empty: no watch)
    eval_every: int  # steps between two watch points
    device: str  # cpu, cuda or mps
    precision: str  # mixed precision of the loop: fp32, bf16 or fp16
    dtype: str  # the frozen base's weight dtype ("auto": the device's default)
    kind: str  # train or continue (part of the run key)
    key: str  # run key
    run_dir: Path  # <bundle>/work/<key>: checkpoints, train_log.jsonl, curve.jsonl
    settings: Settings  # the cache built-in data are generated into (data_cache_dir)


def plan_run(
    bundle: Bundle,
    *,
    tasks: list[str],
    recipe_path: str | Path | None,
    overrides: list[str],
    watch: list[str] | None,
    eval_every: int | None,
    kind: str,
    settings: Settings | None = None,
) -> TrainPlan:
    """Check and resolve a run on `bundle`'s head (see the module docstring); reads the bundle's
    manifest, recipe and head files and the watched tasks' eval records, writes nothing.
    `settings` (default: `Settings.from_env()`) goes into the plan: the phases read data there."""
    from medqwen_cli.evaluation.api import load_eval_tasks

    settings = settings if settings is not None else Settings.from_env()

    bundle.check_version(bundle.head)  # a damaged lineage stops here: nothing read or written yet
    recipe = resolve_recipe(bundle, recipe_path, overrides)
    check_tasks(bundle, recipe, tasks)
    specs, regime = task_specs(recipe, tasks)
    names = task_names(recipe, tasks)
    watched, every = check_watch(recipe, watch, eval_every)
    data_dir = settings.data_cache_dir
    # a watched task without an eval split fails here
    watch_tasks = load_eval_tasks(recipe, watched, data_dir=data_dir) if watched else {}
    if recipe.continual.replay:  # replay reads every earlier task's data: a gone one named here
        earlier = earlier_tasks(bundle, bundle.head, names)
        check_tasks(bundle, recipe, earlier, instead="continue without --replay")
    strategy = plan_strategy(bundle, recipe, bundle.head, names, data_dir=data_dir)

    from medqwen_cli.modeling import select_device  # torch from here on
    from medqwen_cli.training.checkpoint import run_key

    device = select_device(recipe.model.device)
    precision, dtype = training_precision(recipe, device)
    check_trackers(recipe.train.trackers)
    recipe_data = recipe_to_dict(recipe)
    key = run_key(bundle.head, names, recipe_data, kind)
    return TrainPlan(
        recipe=recipe,
        recipe_data=recipe_data,
        parent=bundle.head,
        tasks=names,
        specs=specs,
        spec_tasks=spec_task_names(recipe, tasks, specs),
        strategy=strategy,
        regime=regime,
        watch=watch_tasks,
        eval_every=every,
        device=device,
        precision=precision,
        dtype=dtype,
        kind=kind,
        key=key,
        run_dir=bundle.work_dir / key,
        settings=settings,
    )


def resolve_recipe(bundle: Bundle, recipe_path: str | Path | None, overrides: list[str]) -> Recipe:
    """The recipe a run uses; refuses a change of the adapter's structure."""
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
    else:
        recipe = load_recipe(None, overrides, base=bundle.manifest.stored_recipe())
    refuse_fixed_changes(recipe.adapter, bundle.manifest.adapter_settings)
    return recipe


def training_precision(recipe: Recipe, device: str) -> tuple[str, str]:
    """(train.precision, model.dtype) a run uses on `device`, refusing what cannot train there.

    precision auto: fp32 on CPU; on CUDA bf16 autocast, or fp16 when the base is float16.
    model.dtype is the frozen base's weight dtype, honoured as `evaluate` and `merge` honour it;
    auto: float32 under fp32 (full precision), else the device's default (bfloat16 on CUDA).
    fp16 mixed precision needs CUDA: float16 autocast and its loss scaling are GPU features
    (accelerate would run such a run in fp32 on CPU without a word). float16 base weights train
    only under fp16: without loss scaling their small gradients underflow to zero. bf16 (autocast
    or weights) trains on both devices; on CPU its speed depends on the CPU's bf16 support
    (docs/training.md has a measurement). Adapters and routers stay float32 whatever these say
    (adapters/layer.py).
    """
    precision, dtype = recipe.train.precision, recipe.model.dtype
    if precision == "auto":
        precision = "fp32" if device != "cuda" else ("fp16" if dtype == "float16" else "bf16")
    problems, fixes = [], []
    if precision == "fp16" and device != "cuda":
        problems.append(
            f"train.precision=fp16 (float16 mixed precision) needs a CUDA device; this run is on "
            f"{device}"
        )
        fixes.append("use --set train.precision=fp32 (the precision to train in on CPU)")
    if dtype == "float16" and precision != "fp16":
        problems.append(
            f"model.dtype=float16 trains only under train.precision=fp16 (loss scaling, CUDA); "
            f"this run would use {precision} on {device}"
        )
        fixes.append(
            "train with --set model.dtype=float32, or on a GPU with train.precision=fp16 or auto"
        )
    if problems:
        raise RecipeError("; ".join(problems), "; ".join(fixes))
    if dtype == "auto":
        dtype = "float32" if precision == "fp32" else "auto"
    return precision, dtype


def task_specs(recipe: Recipe, tasks: list[str]) -> tuple[list[DatasetSpec], Any]:
    """Datasets (and regime) of the requested tasks, or of data.datasets when none is named."""
    if not tasks:
        if not recipe.data.datasets:
            raise RecipeError(
                "nothing to train on: the recipe has no data.datasets and no --task was given",
                "pass --task NAME (a recipe task, a dataset path or builtin:NAME) or add data.datasets",
            )
        return list(recipe.data.datasets), recipe.regime
    specs: list[DatasetSpec] = []
    for name in tasks:
        specs += recipe.task_datasets(name)
    regime = recipe.regime
    if len(tasks) == 1 and tasks[0] in recipe.tasks and recipe.tasks[tasks[0]].regime is not None:
        regime = recipe.tasks[tasks[0]].regime
    return specs, regime


def check_tasks(bundle: Bundle, recipe: Recipe, tasks: list[str], *, instead: str = "") -> None:
    """Every task of `tasks` resolves in `recipe` (`Recipe.task_datasets`). A task the head's
    lineage trained on a path that no longer exists is refused with that version and path
    (its data.json recorded them); any other unknown task with the recipe's own message.
    `instead`: what else the hint offers (the option that would not need the task)."""
    for name in tasks:
        try:
            recipe.task_datasets(name)
        except RecipeError:
            gone = trained_paths_gone(bundle, name)
            if gone is None:
                raise
            version, paths = gone
            verb = "no longer exists" if len(paths) == 1 else "no longer exist"
            raise DataError(
                f"task {name!r} was trained in {version} on {', '.join(paths)}, which {verb}",
                f"restore the data there, or give {name!r} its new place under `tasks:` in a "
                "recipe (--recipe)" + (f", or {instead}" if instead else ""),
            ) from None


def trained_paths_gone(bundle: Bundle, task: str) -> tuple[str, list[str]] | None:
    """(the latest version of the head's lineage that trained `task`, the paths it trained it
    on that no longer exist), or None when no version trained it or its data is all there."""
    if bundle.head is None:
        return None
    for entry in reversed(bundle.lineage(bundle.head)):
        if task not in entry.tasks:
            continue
        if DATA_FILE in bundle.read_version_info(entry.id).files:
            recorded = bundle.read_json(DATA_FILE, entry.id)["datasets"]
            paths = [d["path"] for d in recorded if d["task"] == task]
        else:  # a version before data.json: the task's name was its path
            paths = [task]
        gone = [p for p in paths if not p.startswith("builtin:") and not Path(p).exists()]
        return (entry.id, gone) if gone else None
    return None


def task_names(recipe: Recipe, tasks: list[str]) -> list[str]:
    """The names a version records: the tasks given, else the display names of data.datasets."""
    return list(tasks) if tasks else [d.display_name for d in recipe.data.datasets]


def spec_task_names(recipe: Recipe, tasks: list[str], specs: list[DatasetSpec]) -> list[str]:
    """The task each dataset of `specs` belongs to (`task_specs` concatenates the tasks')."""
    if not tasks:
        return [d.display_name for d in specs]
    return [name for name in tasks for _ in recipe.task_datasets(name)]


def check_watch(
    recipe: Recipe, watch: list[str] | None, eval_every: int | None
) -> tuple[list[str], int]:
    """(watched task names, interval); an unknown task or a bad interval fails here."""
    watch = list(dict.fromkeys(watch or []))
    if eval_every is not None and not watch:
        raise RecipeError(
            f"eval_every={eval_every} was given without a task to watch",
            "add --watch TASK (repeatable) to score TASK every N steps while training",
        )
    every = DEFAULT_EVERY if eval_every is None else eval_every
    if every < 1:
        raise RecipeError(f"eval_every must be at least 1, got {every}", "e.g. --eval-every 10")
    for name in watch:
        try:
            recipe.task_datasets(name)
        except RecipeError as exc:
            raise RecipeError(f"cannot watch {name!r}: {exc.message}", exc.hint) from None
    return watch, every


def check_trackers(trackers: list[str]) -> None:
    """Every train.trackers entry is an installed package."""
    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise RecipeError(
                f"train.trackers asks for {name}, which is not installed",
                f"pip install -c constraints.txt {name}, or remove it from train.trackers",
            )

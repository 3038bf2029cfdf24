"""`train` and `continue`: from a bundle's head to a new immutable version.

recipe   the bundle's stored recipe, or --recipe, then --set overrides; the adapter structure
         (method, experts, rank, ...) must match the bundle's, training-only fields may change
data     the datasets of the requested tasks (or data.datasets), mixed by the regime
model    the parent version applied to its base (fingerprint checked)
fit      the accelerate loop, resuming from <bundle>/work/<run key>/ after a crash; with
         `watch`, the watched tasks are scored on the model in training at steps 0, every
         `eval_every` and the last (training/watch.py), buffered in the work directory
write    adapter + metrics.json + train_log.jsonl as a new version (main process only);
         nothing is written to versions/ unless training finished; then the watch's rows go to
         evals.jsonl, stamped with the new version id (so they never name a missing version)
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import RecipeError, TrainingError
from medqwen_cli.recipe import DatasetSpec, Recipe, load_recipe, recipe_to_dict

if TYPE_CHECKING:  # torch loads inside the drivers, after the bundle, recipe and task checks
    from medqwen_cli.training.loop import ProgressFn
    from medqwen_cli.training.watch import CurveFn

DEFAULT_EVERY = 10  # steps between two points of a --watch curve

# Adapter fields fixed at init: changing them would not match init.safetensors.
STRUCTURAL = (
    "method",
    "experts",
    "top_k",
    "rank",
    "scaling",
    "alpha",
    "eta",
    "rho",
    "segments",
    "targets",
    "exclude",
    "seed",
)


@dataclass
class TrainResult:
    bundle: str
    version: str
    parent: str | None
    tasks: list[str]
    steps: int
    samples: int
    tokens: int
    final_loss: float | None
    mean_loss: float | None
    seconds: float
    resumed_from: int
    precision: str = "fp32"  # mixed precision of the loop: fp32 (none), bf16 or fp16 autocast
    dtype: str = "float32"  # dtype of the frozen base's weights (adapters stay float32)
    router_load: dict[str, list[float]] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    # The watch's curve: headline points {version, step, steps, task, metric, value, n}
    curves: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_recipe(bundle: Bundle, recipe_path: str | Path | None, overrides: list[str]) -> Recipe:
    """The recipe a run uses; refuses a change of the adapter's structure."""
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
    else:
        recipe = load_recipe(None, overrides, base=bundle.manifest.recipe)
    stored = bundle.manifest.method
    changed = [
        k
        for k in STRUCTURAL
        if k in stored and recipe.adapter.model_dump(mode="json")[k] != stored[k]
    ]
    if changed:
        raise RecipeError(
            f"the recipe changes adapter fields fixed when the bundle was made: {', '.join(changed)} "
            f"(bundle: {', '.join(f'{k}={stored[k]}' for k in changed)})",
            "only training fields (adapter.dropout, adapter.dropout_masks, adapter.balance_loss, "
            "train.*, data, tasks, eval) "
            "may change; start a new bundle with `medqwen init-experts` for another structure",
        )
    return recipe


def training_precision(recipe: Recipe, device: str) -> tuple[str, str]:
    """(train.precision, model.dtype) a run uses on `device`, refusing what cannot train there.

    precision auto: fp32 on CPU; on CUDA bf16 autocast, or fp16 when the base is float16.
    model.dtype is the frozen base's weight dtype, honoured as `evaluate` and `merge` honour it;
    auto: float32 under fp32 (full precision), else the device's default (bfloat16 on CUDA).
    fp16 mixed precision needs CUDA: float16 autocast and its loss scaling are GPU features
    (accelerate would run such a run in fp32 on CPU without a word). float16 base weights train
    only under fp16: without loss scaling their small gradients underflow to zero. bf16 works on
    both devices. Adapters and routers stay float32 whatever these say (adapters/layer.py).
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
        fixes.append("use --set train.precision=fp32 (or bf16: bfloat16 autocast works on CPU)")
    if dtype == "float16" and precision != "fp16":
        problems.append(
            f"model.dtype=float16 trains only under train.precision=fp16 (loss scaling, CUDA); "
            f"this run would use {precision} on {device}"
        )
        fixes.append(
            "train with --set model.dtype=float32 (or bfloat16), or on a GPU with "
            "train.precision=fp16 or auto"
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


def task_names(recipe: Recipe, tasks: list[str]) -> list[str]:
    return list(tasks) if tasks else [d.display_name for d in recipe.data.datasets]


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


def _steps(cfg: Any, total_records: int, world: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum * world
    return max(1, math.ceil(cfg.epochs * total_records / per_step))


def _batches(
    records: list[list[Any]], sampler: Any, collator: Any, cfg: Any
) -> Iterator[list[dict]]:
    """Per optimizer step: `grad_accum` collated micro-batches of this process's samples."""

    def draws() -> Iterator[tuple[int, int]]:
        while True:  # the sampler yields one epoch per iter(); the next iter() is the next epoch
            yield from sampler

    indices = draws()
    while True:
        micro = []
        for _ in range(cfg.grad_accum):
            chosen = [next(indices) for _ in range(cfg.batch_size)]
            micro.append(collator([records[d][i] for d, i in chosen]))
        yield micro


def train_bundle(
    bundle_path: str | Path | None,
    *,
    tasks: list[str] | None = None,
    recipe_path: str | Path | None = None,
    overrides: list[str] | None = None,
    command: str = "medqwen train",
    restart: bool = False,
    progress_fn: ProgressFn | None = None,
    kind: str = "train",
    watch: list[str] | None = None,
    eval_every: int | None = None,
    curve_fn: CurveFn | None = None,
) -> TrainResult:
    """Train the head on the tasks' datasets and append the result as a new version.

    `watch` names tasks scored on the model in training at step 0, every `eval_every` steps
    (default 10) and at the last step, as `medqwen evaluate` scores them; the points are
    `result.curves` and lines of evals.jsonl with `step`/`steps` (see training/watch.py).
    `curve_fn` gets each step's headline points as they come (main process).
    """
    from medqwen_cli.evaluation.api import load_eval_tasks

    bundle = Bundle.open(bundle_path)
    bundle.check_version(bundle.head)  # a damaged lineage stops here: nothing read or written yet
    recipe = resolve_recipe(bundle, recipe_path, list(overrides or []))
    tasks = list(tasks or [])
    specs, regime = task_specs(recipe, tasks)
    names = task_names(recipe, tasks)
    watch, eval_every = check_watch(recipe, watch, eval_every)
    watch_tasks = load_eval_tasks(recipe, watch) if watch else {}  # no eval split: fails here

    from accelerate import Accelerator  # heavy imports only once the arguments are known good

    from medqwen_cli.adapters import adapter_state_dict, reset_router_stats, router_load
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.loading import load_adapted
    from medqwen_cli.modeling import data_cache_dir, select_device
    from medqwen_cli.training.checkpoint import run_key
    from medqwen_cli.training.loop import fit
    from medqwen_cli.training.watch import Watch, headline_points

    cfg = recipe.train
    device = select_device(recipe.model.device)
    precision, dtype = training_precision(recipe, device)  # before any model loads
    _check_trackers(cfg.trackers)
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
        log_with=list(cfg.trackers) or None,
        project_dir=str(bundle.root / "logs"),
    )
    if watch:
        _check_watch_engine(accelerator)
    parent = bundle.head
    recipe_data = recipe_to_dict(recipe)
    key = run_key(parent, names, recipe_data, kind)
    run_dir = bundle.work_dir / key
    if cfg.trackers:
        accelerator.init_trackers(
            f"{kind}-{key}", config={"parent": str(parent), "tasks": ",".join(names)}
        )
    if restart and accelerator.is_main_process and run_dir.exists():
        shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()

    records = [
        load_records(s, s.split, cache_dir=data_cache_dir(), max_image_pixels=cfg.max_image_pixels)[
            : s.max_samples
        ]
        for s in specs
    ]
    sampler = make_sampler(
        records, specs, regime, cfg.seed, accelerator.process_index, accelerator.num_processes
    )
    total_steps = _steps(cfg, sum(len(r) for r in records), accelerator.num_processes)

    loaded = load_adapted(bundle, parent, dtype=dtype, device=str(accelerator.device))
    model = loaded.model
    _set_dropout(model, recipe.adapter.dropout, recipe.adapter.dropout_masks)
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
    collator = Collator(
        loaded.processor, max_image_pixels=cfg.max_image_pixels, max_length=cfg.max_length
    )
    watcher = None
    if watch:
        watcher = Watch(
            recipe, loaded.processor, watch_tasks, every=eval_every, run_dir=run_dir,
            curve_fn=curve_fn if accelerator.is_main_process else None,
        )  # fmt: skip
    result = fit(
        model,
        _batches(records, sampler, collator, cfg),
        sampler,
        cfg=cfg,
        balance_weight=recipe.adapter.balance_loss,
        total_steps=total_steps,
        accelerator=accelerator,
        run_dir=run_dir,
        progress_fn=progress_fn if accelerator.is_main_process else None,
        watch=watcher,
    )
    p = result.progress
    summary = TrainResult(
        bundle=str(bundle.root),
        version="",
        parent=parent,
        tasks=names,
        steps=p.step,
        samples=p.samples,
        tokens=p.tokens,
        final_loss=p.last_loss,
        mean_loss=p.loss_sum / p.step if p.step else None,
        seconds=round(result.seconds, 3),
        resumed_from=result.resumed_from,
        precision=precision,
        dtype=str(next(p for p in model.parameters() if not p.requires_grad).dtype)[6:],
        router_load=router_load(model),
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        curve = sorted(watcher.rows(), key=lambda r: r["step"]) if watcher is not None else []
        summary.curves = headline_points(curve)
        log = run_dir / "train_log.jsonl"
        entry = bundle.append_version(
            adapter_state_dict(model),
            command=command,
            tasks=names,
            recipe=recipe_data,
            parent=parent,
            json_files={
                "metrics.json": {
                    "train": {k: v for k, v in summary.to_dict().items() if k != "evaluations"}
                }
            },
            files={"train_log.jsonl": log} if log.is_file() else None,
        )
        summary.version = entry.id
        # only now that the version exists: evals.jsonl never names a version that does not
        curve = [{**row, "version": entry.id} for row in curve]
        bundle.append_evals(curve)
        summary.curves = headline_points(curve)
        shutil.rmtree(run_dir, ignore_errors=True)
        if bundle.work_dir.is_dir() and not any(bundle.work_dir.iterdir()):
            bundle.work_dir.rmdir()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        published = Bundle.open(bundle.root)
        summary.version = published.head or ""
        if watcher is not None:  # the curve the main process published
            summary.curves = headline_points(
                [r for r in published.read_evals() if r.get("step") is not None
                 and r.get("version") == summary.version]
            )  # fmt: skip
    if cfg.trackers:  # flushes the trackers; it also ends the process group, so it comes last
        accelerator.end_training()
    return summary


def _is_main_process() -> bool:
    """Rank 0, or a single process (torchrun and accelerate launch set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def continue_bundle(
    bundle_path: str | Path | None,
    *,
    task: str,
    recipe_path: str | Path | None = None,
    overrides: list[str] | None = None,
    command: str = "medqwen continue",
    restart: bool = False,
    evaluate: bool = True,
    progress_fn: ProgressFn | None = None,
    eval_progress: Any = None,
    watch: list[str] | None = None,
    eval_every: int | None = None,
    curve_fn: CurveFn | None = None,
) -> TrainResult:
    """The next task of a sequence: train the head on `task` only, then evaluate every task seen.

    With evaluation on, the parent is first scored on the new task (once: the cell R[i-1][i] that
    forward transfer needs) when the parent trained a task itself, and after training the new
    version is scored on every task of its lineage (and `eval.tasks`), so the forgetting matrix
    fills itself. `watch` / `eval_every` / `curve_fn`: a forgetting curve, as in `train_bundle`
    (independent of `evaluate`).
    """
    bundle = Bundle.open(bundle_path)
    bundle.check_version(bundle.head)  # before the parent is scored (evals.jsonl) or trained
    recipe = resolve_recipe(bundle, recipe_path, list(overrides or []))
    recipe.task_datasets(task)  # an unknown task fails here, before any work
    check_watch(recipe, watch, eval_every)  # so does an unknown watched task

    from medqwen_cli.evaluation.api import evaluate_bundle
    from medqwen_cli.modeling import select_device  # torch from here on

    training_precision(recipe, select_device(recipe.model.device))  # and a dtype it cannot train
    evaluations: list[dict[str, Any]] = []
    parent = bundle.head
    evaluate = evaluate and _is_main_process()  # one process scores; the others only train
    if evaluate and parent is not None and bundle.entry(parent).tasks:
        done = {
            (r.get("version"), r.get("task"))
            for r in bundle.read_evals()
            if r.get("headline") and r.get("step") is None  # curve points are not cells
        }
        if (parent, task) not in done:
            before = evaluate_bundle(
                bundle, version=parent, tasks=[task], recipe=recipe, progress=eval_progress
            )
            evaluations += before.records
    result = train_bundle(
        bundle.root,
        tasks=[task],
        recipe_path=recipe_path,
        overrides=overrides,
        command=command,
        restart=restart,
        progress_fn=progress_fn,
        kind="continue",
        watch=watch,
        eval_every=eval_every,
        curve_fn=curve_fn,
    )
    if evaluate and result.version:
        bundle = Bundle.open(result.bundle)
        seen = bundle.read_version_info(result.version).lineage_tasks
        seen = list(dict.fromkeys([*seen, *(recipe.eval.tasks or [])]))
        after = evaluate_bundle(
            bundle, version=result.version, tasks=seen, recipe=recipe, progress=eval_progress
        )
        evaluations += after.records
    result.evaluations = evaluations
    return result


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


def _check_trackers(trackers: list[str]) -> None:
    import importlib.util

    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise RecipeError(
                f"train.trackers asks for {name}, which is not installed",
                f"pip install -c constraints.txt {name}, or remove it from train.trackers",
            )


def _set_dropout(model: Any, p: float, masks: str = "shared") -> None:
    """The recipe's adapter dropout (a training field: it may change between versions)."""
    from torch import nn

    from medqwen_cli.adapters import adapter_layers

    for _, layer in adapter_layers(model):
        layer.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        layer.dropout_masks = masks


def make_sampler(
    records: list[list[Any]],
    specs: list[DatasetSpec],
    regime: Any,
    seed: int,
    rank: int,
    world: int,
) -> Any:
    """The regime sampler over the datasets, sharded for this process."""
    from medqwen_cli.data.regimes import RegimeSampler

    if any(len(r) == 0 for r in records):
        empty = [s.display_name for s, r in zip(specs, records, strict=True) if not r]
        raise TrainingError(
            f"empty dataset(s): {', '.join(empty)}", "check the dataset paths and splits"
        )
    return RegimeSampler(
        sizes=[len(r) for r in records],
        regime=regime,
        weights=[s.weight for s in specs],
        seed=seed,
        rank=rank,
        world_size=world,
    )

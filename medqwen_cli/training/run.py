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
publish  adapter + metrics.json + train_log.jsonl as a new version (main process only);
         nothing is written to versions/ unless training finished; then the watch's rows go to
         evals.jsonl, stamped with the new version id (so they never name a missing version)

`train_bundle` runs the five in a row; `continue_bundle` scores the parent on the new task
between plan and data, and the new version on every task of its lineage after publish (a task
without eval records is left out of the scores, and said once in `TrainResult.notes`). Each
opens the bundle once; the processes other than the main one open it again after publish, to
read the version the main process wrote.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli.bundle import Bundle, find_bundle
from medqwen_cli.continual import CONTINUAL_FILE, DATA_FILE, data_record, make_replay_sampler
from medqwen_cli.errors import TrainingError
from medqwen_cli.recipe import DatasetSpec
from medqwen_cli.settings import Settings
from medqwen_cli.training.plan import (  # noqa: F401  (re-exported: imported from here elsewhere)
    DEFAULT_EVERY,
    TrainPlan,
    check_watch,
    plan_run,
    resolve_recipe,
    task_names,
    task_specs,
    training_precision,
)

if TYPE_CHECKING:  # torch loads inside the phases, after the bundle, recipe and task checks
    from medqwen_cli.continual.bases import Protection
    from medqwen_cli.evaluation.api import EvaluationResult
    from medqwen_cli.loading import AdaptedModel
    from medqwen_cli.training.loop import FitResult, ProgressFn
    from medqwen_cli.training.watch import CurveFn, Watch


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
    # The continual strategy: None, or {strategy, settings, earlier task -> records replayed from}
    continual: dict[str, Any] | None = None
    # What the evaluations left out (a task without an eval split), one line each, once per task
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- drivers


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
    settings: Settings | None = None,
) -> TrainResult:
    """Train the head on the tasks' datasets and append the result as a new version.

    `watch` names tasks scored on the model in training at step 0, every `eval_every` steps
    (default 10) and at the last step, as `medqwen evaluate` scores them; the points are
    `result.curves` and lines of evals.jsonl with `step`/`steps` (see training/watch.py).
    `curve_fn` gets each step's headline points as they come (main process).
    `settings` (default: `Settings.from_env()`): the default bundle and the data cache.
    """
    settings = settings if settings is not None else Settings.from_env()
    bundle = Bundle.open(find_bundle(bundle_path, settings))  # the one open of the run
    plan = plan_run(
        bundle, tasks=list(tasks or []), recipe_path=recipe_path, overrides=list(overrides or []),
        watch=watch, eval_every=eval_every, kind=kind, settings=settings,
    )  # fmt: skip
    accelerator = make_accelerator(plan, bundle)
    return run_plan(
        plan, bundle, accelerator, command=command, restart=restart, progress_fn=progress_fn,
        curve_fn=curve_fn,
    )  # fmt: skip


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
    `settings`: as in `train_bundle`.
    """
    settings = settings if settings is not None else Settings.from_env()
    bundle = Bundle.open(find_bundle(bundle_path, settings))  # the one open of the run
    plan = plan_run(
        bundle, tasks=[task], recipe_path=recipe_path, overrides=list(overrides or []),
        watch=watch, eval_every=eval_every, kind="continue", settings=settings,
    )  # fmt: skip
    accelerator = make_accelerator(plan, bundle)
    evaluate = evaluate and accelerator.is_main_process
    scored = [score_parent(plan, bundle, task, eval_progress)] if evaluate else []
    result = run_plan(
        plan, bundle, accelerator, command=command, restart=restart, progress_fn=progress_fn,
        curve_fn=curve_fn,
    )  # fmt: skip
    if evaluate and result.version:
        scored.append(score_lineage(plan, bundle, result.version, eval_progress))
    done = [e for e in scored if e is not None]
    result.evaluations = [line for e in done for line in e.records]
    # the new task is in both evaluations: its note, the same line, is kept once
    result.notes = list(dict.fromkeys(note for e in done for note in e.notes))
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
    protection = protect_model(plan, bundle, loaded, accelerator)
    batches = data.batches(loaded.processor, plan.recipe.train)
    watch = make_watch(plan, loaded.processor, curve_fn if accelerator.is_main_process else None)
    result = fit_plan(
        plan, loaded.model, batches, data, accelerator, watch=watch,
        progress_fn=progress_fn if accelerator.is_main_process else None,
    )  # fmt: skip
    if protection is not None:  # the run's own task joins the bases, for the next --protect
        new = [r for part in data.records[: len(plan.specs)] for r in part]
        protection.finish(loaded.model, plan.tasks, new)
    summary = summarize(plan, bundle, result, loaded.model, protection)
    publish(
        plan, bundle, accelerator, loaded.model, summary, watch, data, protection,
        command=command,
    )  # fmt: skip
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


@dataclass
class TrainData:
    """The records of each dataset, the sampler over them and the run's length in steps."""

    records: list[list[Any]]  # the new task's datasets, then the replay pools (if any)
    sampler: Any
    total_steps: int
    data: dict[str, Any]  # data.json of the version: what the new task's datasets held

    def batches(self, processor: Any, cfg: Any) -> Iterator[list[dict]]:
        """Per optimizer step: `grad_accum` micro-batches collated for `processor`."""
        from medqwen_cli.data.collate import Collator

        collator = Collator(
            processor, max_image_pixels=cfg.max_image_pixels, max_length=cfg.max_length
        )
        return _batches(self.records, self.sampler, collator, cfg)


def load_data(plan: TrainPlan, accelerator: Any) -> TrainData:
    """Reads the plan's datasets (capped at max_samples) and shards the regime sampler for this
    process (accelerator.process_index of num_processes); an empty dataset fails here."""
    from medqwen_cli.data.readers import load_records

    cfg = plan.recipe.train
    data_dir = plan.settings.data_cache_dir
    records = [
        load_records(s, s.split, cache_dir=data_dir, max_image_pixels=cfg.max_image_pixels)[
            : s.max_samples
        ]
        for s in plan.specs
    ]
    sampler = make_sampler(
        records, plan.specs, plan.regime, cfg.seed, accelerator.process_index,
        accelerator.num_processes,
    )  # fmt: skip
    data = data_record(plan.spec_tasks, plan.specs, records)
    new_per_batch = cfg.batch_size
    if plan.replay is not None:  # the pools follow the new datasets; r of b draws come from them
        sampler = make_replay_sampler(
            sampler, plan.replay, offset=len(records), seed=cfg.seed,
            rank=accelerator.process_index, world=accelerator.num_processes,
        )  # fmt: skip
        records = records + plan.replay.pools
        new_per_batch -= plan.replay.per_batch
    total_steps = _steps(
        cfg, sum(len(r) for r in records[: len(plan.specs)]), accelerator.num_processes,
        new_per_batch,
    )  # fmt: skip
    return TrainData(records, sampler, total_steps, data)


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


def protect_model(
    plan: TrainPlan, bundle: Bundle, loaded: AdaptedModel, accelerator: Any
) -> Protection | None:
    """With continual.protect: the earlier tasks' bases (stored, or computed here from their
    data on the parent model), and the new branches they guard added to the model (frozen
    experts before them); None without."""
    if plan.protect is None:
        return None
    from medqwen_cli.continual.bases import Protection

    protection = Protection(plan.protect, plan.recipe, loaded.processor, accelerator.device)
    protection.prepare(loaded.model, bundle, plan.recipe.adapter)
    return protection


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
    )


def summarize(
    plan: TrainPlan,
    bundle: Bundle,
    result: FitResult,
    model: Any,
    protection: Protection | None = None,
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
        continual=(
            plan.replay.summary() if plan.replay is not None
            else protection.summary(model) if protection is not None
            else None
        ),
    )  # fmt: skip


def publish(
    plan: TrainPlan,
    bundle: Bundle,
    accelerator: Any,
    model: Any,
    summary: TrainResult,
    watch: Watch | None,
    data: TrainData,
    protection: Protection | None = None,
    *,
    command: str,
) -> None:
    """Append the trained adapters as a version, then the watch's rows to evals.jsonl, and
    remove the work directory (main process); fills `summary.version` and `summary.curves`.

    `bundle.append_version` keeps the main process's manifest current. The other processes
    wrote nothing: they open the bundle again, after the barrier, for the version's id.
    """
    from medqwen_cli._io import save_tensors
    from medqwen_cli.adapters import adapter_state_dict
    from medqwen_cli.continual.bases import to_file
    from medqwen_cli.continual.protect import PROTECT_FILE
    from medqwen_cli.training.watch import headline_points

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        curve = sorted(watch.rows(), key=lambda r: r["step"]) if watch is not None else []
        summary.curves = headline_points(curve)
        log = plan.run_dir / "train_log.jsonl"
        files = {"train_log.jsonl": log} if log.is_file() else {}
        continual = plan.replay.to_json() if plan.replay is not None else None
        if protection is not None:
            continual = protection.to_json(model, plan.protect.earlier)
            files[PROTECT_FILE] = plan.run_dir / PROTECT_FILE
            save_tensors(
                files[PROTECT_FILE], to_file(protection.bases), {"format": "medqwen-bases"}
            )
        entry = bundle.append_version(
            adapter_state_dict(model),
            command=command,
            tasks=plan.tasks,
            recipe=plan.recipe_data,
            parent=plan.parent,
            json_files={
                "metrics.json": {
                    "train": {
                        k: v
                        for k, v in summary.to_dict().items()
                        if k not in ("evaluations", "notes")
                    }
                },
                DATA_FILE: data.data,
                **({CONTINUAL_FILE: continual} if continual is not None else {}),
            },
            files=files or None,
        )
        summary.version = entry.id
        # only now that the version exists: evals.jsonl never names a version that does not
        curve = [{**row, "version": entry.id} for row in curve]
        bundle.append_evals(curve)
        summary.curves = headline_points(curve)
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        if bundle.work_dir.is_dir() and not any(bundle.work_dir.iterdir()):
            bundle.work_dir.rmdir()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        published = Bundle.open(bundle.root)
        summary.version = published.head or ""
        if watch is not None:  # the curve the main process published
            summary.curves = headline_points(
                [r for r in published.read_evals() if r.get("step") is not None
                 and r.get("version") == summary.version]
            )  # fmt: skip


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


# --------------------------------------------------------------------------- helpers


def _steps(cfg: Any, total_records: int, world: int, new_per_batch: int) -> int:
    """max_steps, else the steps that show the new data `epochs` times (replayed records are
    extra: `new_per_batch` of each micro-batch are the new task's)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_step = new_per_batch * cfg.grad_accum * world
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

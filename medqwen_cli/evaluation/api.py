"""`evaluate_bundle`: score one bundle version (or the base alone) on its tasks, and record it.

    evaluate_bundle(bundle, version=None, tasks=None, base_only=False, scoring=None,
                    save_predictions=None, progress=None, recipe=None, overrides=None,
                    settings=None, empty_ok=False)
        -> EvaluationResult

`settings` (settings.Settings) names the default bundle and the cache built-in data are generated
into; the CLI reads them from the environment once per command, and so does a call without them.

0. The recipe: the bundle's stored one (or `recipe`), with `overrides` (`--set key=value`
   items) applied for this evaluation only: nothing is written back to the bundle. Keys the
   bundle fixes (`adapter.*`, `model.base`, `model.revision`) are refused.
1. The model: the version's adapters on the bundle's base (`load_adapted`), or with
   `base_only` (or version "base") the base alone, for the zero-shot row b of the accuracy
   matrix; dtype and device from the recipe.
2. The tasks: `tasks`, else the recipe's `eval.tasks`, else every task of the version's lineage
   (for the base: the head's), else the names of `data.datasets`. Each name resolves through
   `recipe.task_datasets` (a recipe task, a dataset name, a path or builtin:NAME).
3. The records: every dataset's `eval_split` (datasets with `eval_split: null` are skipped), in
   recipe order, capped at `eval.max_samples` taken in turn from each (dataset, record type, POPE
   answer) group (deterministic: no sampling), so a small cap still covers every kind of record.
   A dataset without that split (a single file holds the training split only: `MissingSplit`)
   is left out, and a task left without eval records is not scored (never scored 0); the
   result's `notes` say so, one line per task. When no task is left, that is an error (nothing
   to report), unless `empty_ok` (`continue`: its training is done either way).
4. Answers: `Runner` (likelihood over candidates, or greedy generation; see runner.py).
5. Scores per record type and one headline per task (see summary.py); one line per
   (version, task, metric) is appended to `<bundle>/evals.jsonl` with n, split, scoring, type
   and headline (true on the line that fills the accuracy matrix).

Steps 3-5 on a model already in memory are `score_model` (records from `load_eval_tasks`, answers
from `Runner`, scores from `score_task_predictions`) and `eval_lines`: `evaluate_bundle` uses them
on a loaded version, and the training watch (training/watch.py) on the model being trained, so a
point of a forgetting curve is scored exactly as `medqwen evaluate` scores a version.

Data and the model are checked before anything runs (an unknown task fails in a second). Nothing
here prints or logs record text; `save_predictions` writes the answers (JSONL, atomically) only
where the caller asks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medqwen_cli.bundle import BASE_VERSION, Bundle, atomic_write_bytes
from medqwen_cli.choices import SCORINGS
from medqwen_cli.errors import EvaluationError
from medqwen_cli.evaluation.summary import TaskEvaluation, score_task_predictions
from medqwen_cli.evaluation.task_records import (  # noqa: F401  (re-exported)
    TaskData,
    load_eval_tasks,
    stratified_head,
)
from medqwen_cli.settings import Settings

# Facts of the bundle itself (its manifest), not settings of an evaluation: never overridden.
FIXED_KEYS = ("adapter", "model.base", "model.revision")
ProgressFn = Callable[[int, int, str], None]


@dataclass
class EvaluationResult:
    bundle: str
    version: str  # a version id, or "base"
    scoring: str
    tasks: list[TaskEvaluation]
    records: list[dict[str, Any]]  # the lines appended to evals.jsonl
    n: int
    seconds: float  # answering and scoring, model loading excluded
    load_seconds: float
    answer_seconds: float  # the model's share of `seconds`
    predictions_file: str | None = None
    notes: list[str] = field(default_factory=list)  # tasks left out or part-scored, one line each

    @property
    def samples_per_second(self) -> float | None:
        """Records answered per second of model time (loading and metrics excluded)."""
        return self.n / self.answer_seconds if self.answer_seconds > 0 else None

    def rows(self) -> list[dict[str, Any]]:
        return [row for task in self.tasks for row in task.metric_rows()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "version": self.version,
            "scoring": self.scoring,
            "n": self.n,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "answer_seconds": round(self.answer_seconds, 3),
            "samples_per_second": self.samples_per_second,
            "predictions_file": self.predictions_file,
            "headlines": {
                t.task: {"metric": t.headline_metric, "value": t.headline, "n": t.n}
                for t in self.tasks
            },
            "results": self.rows(),
            "notes": self.notes,
        }


def evaluate_bundle(
    bundle: Bundle | str | os.PathLike[str] | None,
    *,
    version: str | None = None,
    tasks: Sequence[str] | None = None,
    base_only: bool = False,
    scoring: str | None = None,
    save_predictions: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    recipe: Any = None,
    overrides: Sequence[str] | None = None,
    settings: Settings | None = None,
    empty_ok: bool = False,
) -> EvaluationResult:
    """Evaluate a version (default head) or the base on its tasks (see the module docstring).

    `recipe` (default: the one stored in the bundle) resolves task names and evaluation settings;
    `continue` passes the recipe it trained with, so tasks defined only there resolve too.
    `overrides` (`--set` items, e.g. "eval.max_samples=20") apply to it for this call only.
    `settings` default: `Settings.from_env()`. `empty_ok`: when no task has eval records, return
    a result without tasks (its `notes` say why; no model loaded, nothing recorded) instead of
    raising `EvaluationError`.
    """
    from medqwen_cli.loading import bundle_recipe
    from medqwen_cli.recipe import override_recipe

    overrides = list(overrides or [])
    check_eval_overrides(overrides)  # a typo fails before the bundle is read
    settings = settings if settings is not None else Settings.from_env()
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle, settings)
    recipe = recipe if recipe is not None else bundle_recipe(bundle)
    recipe = override_recipe(recipe, overrides, source=f"{bundle.root}'s recipe with --set")
    scoring = scoring or recipe.eval.scoring
    if scoring not in SCORINGS:
        raise EvaluationError(f"unknown scoring {scoring!r}", f"use one of {', '.join(SCORINGS)}")
    if version == BASE_VERSION:
        base_only, version = True, None
    if base_only and version is not None:
        raise EvaluationError(
            f"both a version ({version}) and the base alone were asked for",
            "pass --version to evaluate a version, or --base-only for the zero-shot row",
        )
    vid = BASE_VERSION if base_only else bundle.resolve_version(version)
    if save_predictions is not None and Path(save_predictions).is_dir():
        raise EvaluationError(
            f"--save-predictions {save_predictions} is a directory",
            "give a file name, e.g. predictions.jsonl",
        )
    names = default_tasks(bundle, recipe, vid) if not tasks else list(dict.fromkeys(tasks))
    notes: list[str] = []
    task_data = load_eval_tasks(recipe, names, data_dir=settings.data_cache_dir, notes=notes)
    if not task_data:  # before any model work
        if not empty_ok:
            raise EvaluationError(
                f"nothing to score: {'; '.join(notes)}",
                "give the task an eval split (a directory with train.jsonl and eval.jsonl, or "
                "test.*), or evaluate a task that has one: --task NAME",
            )
        return EvaluationResult(
            bundle=str(bundle.root), version=vid, scoring=scoring, tasks=[], records=[], n=0,
            seconds=0.0, load_seconds=0.0, answer_seconds=0.0, notes=notes,
        )  # fmt: skip

    t0 = time.perf_counter()
    model, processor = load_model(bundle, recipe, vid, settings.cache_dir)
    load_seconds = time.perf_counter() - t0

    scored = score_model(
        model, processor, recipe, task_data, scoring=scoring, progress=progress,
        keep_predictions=save_predictions is not None,
    )  # fmt: skip
    lines = eval_lines(vid, scored)
    written = None
    if save_predictions is not None:
        written = str(write_predictions(save_predictions, [(vid, p) for p in scored.predictions]))
    bundle.append_evals(lines)
    return EvaluationResult(
        bundle=str(bundle.root), version=vid, scoring=scoring, tasks=scored.tasks, records=lines,
        n=scored.n, seconds=scored.seconds, load_seconds=load_seconds,
        answer_seconds=scored.answer_seconds, predictions_file=written, notes=notes,
    )  # fmt: skip


def check_eval_overrides(overrides: Sequence[str]) -> None:
    """Check `--set` items against the schema, and refuse keys the bundle fixes (FIXED_KEYS)."""
    from medqwen_cli.recipe import check_overrides

    for key in check_overrides(list(overrides)):
        fixed = next((f for f in FIXED_KEYS if key == f or key.startswith(f + ".")), None)
        if fixed is not None:
            raise EvaluationError(
                f"--set {key}: {fixed} is fixed by the bundle (its manifest), not by the recipe",
                "evaluate can override evaluation settings (eval.*, model.dtype, model.device, "
                "train.max_image_pixels, tasks); a different adapter or base is another bundle",
            )


@dataclass
class ModelScores:
    """What `score_model` returns: per-task evaluations, and the answers when asked for."""

    scoring: str
    tasks: list[TaskEvaluation]
    n: int
    seconds: float  # answering and scoring
    answer_seconds: float  # the model's share of `seconds`
    predictions: list[Any] = field(default_factory=list)  # Prediction per record, in task order


def score_model(
    model: Any,
    processor: Any,
    recipe: Any,
    tasks: Mapping[str, TaskData],
    *,
    scoring: str | None = None,
    progress: ProgressFn | None = None,
    keep_predictions: bool = False,
) -> ModelScores:
    """Answer and score `tasks` (`load_eval_tasks`'s result) with a loaded model.

    The recipe's eval settings apply (eval.batch_size, eval.max_new_tokens, eval.scoring unless
    `scoring` is given, eval.finding_keywords); the model is put in eval mode and answers without
    gradients. Nothing is written.
    """
    from medqwen_cli.evaluation.runner import Runner

    scoring = scoring or recipe.eval.scoring
    runner = Runner(
        model, processor, batch_size=recipe.eval.batch_size,
        max_new_tokens=recipe.eval.max_new_tokens,
        max_image_pixels=recipe.train.max_image_pixels, max_length=recipe.train.max_length,
    )  # fmt: skip
    total = sum(len(data.records) for data in tasks.values())
    done, answer_seconds = 0, 0.0
    t0 = time.perf_counter()
    results, predictions = [], []
    for name, data in tasks.items():

        def advance(n: int, _record: Any, name: str = name) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total, name)

        t1 = time.perf_counter()
        preds = runner.run(data.records, scoring, advance)  # type: ignore[arg-type]
        answer_seconds += time.perf_counter() - t1
        if keep_predictions:
            predictions += preds
        results.append(
            score_task_predictions(
                name, data.records, preds, split=data.split, datasets=data.datasets,
                findings=recipe.eval.finding_keywords or None,
            )
        )  # fmt: skip
    return ModelScores(
        scoring=scoring, tasks=results, n=total, seconds=time.perf_counter() - t0,
        answer_seconds=answer_seconds, predictions=predictions,
    )  # fmt: skip


def eval_lines(version: str | None, scored: ModelScores) -> list[dict[str, Any]]:
    """The evals.jsonl lines of `scored`: one per (task, metric), `version` first when given."""
    return [
        {**({"version": version} if version is not None else {}), "task": row["task"],
         "metric": row["metric"], "value": row["value"], "n": row["n"], "split": task.split,
         "scoring": scored.scoring, "headline": row["headline"], "type": row["type"],
         **({"reason": row["reason"]} if row["reason"] else {}),
         **task.outcomes.get(row["metric"], {})}
        for task in scored.tasks for row in task.metric_rows()
    ]  # fmt: skip


def default_tasks(bundle: Bundle, recipe: Any, version: str) -> list[str]:
    """recipe eval.tasks, else the lineage's tasks (the head's for the base), else data.datasets."""
    if recipe.eval.tasks:
        return list(dict.fromkeys(recipe.eval.tasks))
    if bundle.manifest.versions:
        lineage_of = None if version == BASE_VERSION else version
        seen = bundle.read_version_info(lineage_of).lineage_tasks
        if seen:
            return list(dict.fromkeys(seen))
    names = [d.display_name for d in recipe.data.datasets]
    if not names:
        raise EvaluationError(
            "no task to evaluate: the recipe sets no eval.tasks, no version trained a task, "
            "and data.datasets is empty",
            "name the tasks: medqwen evaluate --task NAME (a recipe task, a dataset path or "
            "builtin:NAME)",
        )
    return list(dict.fromkeys(names))


def load_model(
    bundle: Bundle, recipe: Any, version: str, cache_dir: Path | None = None
) -> tuple[Any, Any]:
    """(model, processor) of `version` (or the base alone for "base") as the recipe's model
    settings ask; a preset base is found under `cache_dir`."""
    from medqwen_cli.loading import bundle_base, load_adapted
    from medqwen_cli.modeling import load_base

    options = {
        "dtype": recipe.model.dtype,
        "device": recipe.model.device,
        "max_pixels": recipe.train.max_image_pixels,
    }
    if version == BASE_VERSION:
        model, processor, _ = load_base(bundle_base(bundle, cache_dir=cache_dir), **options)
        return model, processor
    adapted = load_adapted(bundle, version, **options, cache_dir=cache_dir)
    return adapted.model, adapted.processor


def write_predictions(path: str | os.PathLike[str], predictions: list[tuple[str, Any]]) -> Path:
    """JSONL, one answer per line (version, id, task, type, prediction, reference, scoring,
    scores), written to a temporary file and renamed into place."""
    out = Path(path).expanduser().resolve()
    text = "".join(
        json.dumps({"version": vid, **p.to_json()}, ensure_ascii=False) + "\n"
        for vid, p in predictions
    )
    try:
        atomic_write_bytes(out, text.encode("utf-8"))
    except OSError as exc:
        raise EvaluationError(
            f"cannot write predictions to {out}: {exc.strerror or exc}",
            "choose a writable path for --save-predictions",
        ) from None
    return out

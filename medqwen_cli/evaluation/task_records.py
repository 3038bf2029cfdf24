"""The evaluation records of a task: every dataset's eval split, capped fairly.

`load_eval_tasks` reads each named task as `medqwen evaluate` does; with `eval.max_samples`,
`stratified_head` keeps a deterministic share of every dataset, record type and POPE answer,
so a small cap still covers them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medqwen_cli.errors import EvaluationError, MissingSplit


@dataclass
class TaskData:
    """One task's evaluation records (capped by eval.max_samples), split label, dataset names."""

    records: list[Any]
    split: str
    datasets: list[str]


def load_eval_tasks(
    recipe: Any, names: Sequence[str], *, data_dir: Path, notes: list[str] | None = None
) -> dict[str, TaskData]:
    """Each named task's evaluation records, as `medqwen evaluate` reads them (built-in data
    generated under `data_dir`, `Settings.data_cache_dir`); an unknown task fails here, before
    any model work.

    A task without eval records (every dataset sets `eval_split: null` or, `MissingSplit`, is a
    single file that holds the training split only) fails here too, unless `notes` is a list
    (collect mode, like `ReadContext.problems`): then such a dataset is left out, a task left
    without any is left out of the result, and one line per such task is appended to `notes`
    (task name, file and reason; never record text). The watch passes none: a curve needs eval
    records.
    """
    tasks = {}
    for name in dict.fromkeys(names):
        data = _task_records(recipe, name, data_dir, notes)
        if data is not None:
            tasks[name] = data
    return tasks


def _task_records(
    recipe: Any, name: str, data_dir: Path, notes: list[str] | None
) -> TaskData | None:
    """Eval records of task `name` (capped by eval.max_samples), split label, dataset names;
    None when it has no eval records and `notes` takes the reason (see `load_eval_tasks`)."""
    from medqwen_cli.data.readers import load_records

    specs = [s for s in recipe.task_datasets(name) if s.eval_split]
    if not specs:
        if notes is None:
            raise EvaluationError(
                f"task {name!r} has no evaluation split: every dataset sets eval_split: null",
                "set eval_split (e.g. eval) for its datasets in the recipe, or pass a dataset "
                "path with --task",
            )
        notes.append(
            f"task {name!r} has no eval split and is not scored: every dataset sets "
            "eval_split: null"
        )
        return None
    records: list[tuple[int, Any]] = []
    read: list[Any] = []  # the specs whose eval split was found
    missing: list[str] = []  # MissingSplit messages of the others
    for i, spec in enumerate(specs):
        try:
            loaded = load_records(
                spec, spec.eval_split, cache_dir=data_dir,
                max_image_pixels=recipe.train.max_image_pixels,
            )  # fmt: skip
        except MissingSplit as exc:
            if notes is None:
                raise
            missing.append(exc.message)
            continue
        read.append(spec)
        records += [(i, r.model_copy(update={"task": name})) for r in loaded]
    if notes is not None and missing:
        scored = ", ".join(s.display_name for s in read)
        done = f"is scored on {scored} only" if read else "has no eval split and is not scored"
        notes.append(f"task {name!r} {done}: {'; '.join(missing)}")
    if not read:
        return None
    if recipe.eval.max_samples is not None:
        records = stratified_head(records, recipe.eval.max_samples)
    split = ",".join(dict.fromkeys(s.eval_split for s in read))
    return TaskData([r for _, r in records], split, [s.display_name for s in read])


def stratified_head(items: list[tuple[int, Any]], n: int) -> list[tuple[int, Any]]:
    """At most `n` of `(dataset index, record)` items, deterministically, taken in turn from each
    group (dataset, record type, and the answer for POPE probes) in file order, so that a small
    cap still covers every dataset, every type and both POPE answers; kept in file order."""
    if len(items) <= n:
        return items
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, (dataset, record) in enumerate(items):
        answer = record.answer.strip().lower() if record.type == "pope" else None
        groups.setdefault((dataset, record.type, answer), []).append(position)
    chosen: list[int] = []
    queues = [list(reversed(positions)) for positions in groups.values()]
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return [items[p] for p in sorted(chosen)]

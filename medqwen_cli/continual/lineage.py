"""The lineage's earlier tasks, and the data each version trained on.

Every version records what it trained on in `data.json` (`data_record`): per dataset its task,
path, split, record count and a digest of the records' content (`data_digest`), never record
text. A strategy that reads an earlier task's data again (replay every run; protect once, when no
version stored the task's basis) reads it as the run's recipe defines the task and checks it
against that digest (`task_train_records`), so data that changed or is gone since is refused
with the task and the path named. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medqwen_cli.errors import DataError, MedqwenError, RecipeError

DATA_FILE = "data.json"  # in every version: what it trained on (digests, no record text)


# --------------------------------------------------------------------------- data digests


def data_digest(records: Sequence[Any]) -> str:
    """sha256 of the records' content in order: id, type, question, answer, labels, meta and
    the images' file names. The images' directories, the source file and the task name are left
    out, so data moved to another disk (or a built-in task generated in another cache) keeps
    its digest; a changed, added, removed or reordered record changes it."""
    digest = hashlib.sha256()
    for r in records:
        item = {
            "id": r.id, "type": r.type, "question": r.question, "answer": r.answer,
            "labels": r.labels, "meta": r.meta, "images": [Path(p).name for p in r.images],
        }  # fmt: skip
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def data_record(tasks: Sequence[str], specs: Sequence[Any], records: Sequence[Sequence[Any]]):
    """`data.json` of a version: per dataset trained on, its task, path, split, record count
    and digest (no record text)."""
    return {
        "datasets": [
            {
                "task": t,
                "path": s.path,
                "split": s.split,
                "records": len(r),
                "sha256": data_digest(r),
            }  # fmt: skip
            for t, s, r in zip(tasks, specs, records, strict=True)
        ]
    }


def earlier_tasks(bundle: Any, parent: str | None, new_tasks: Sequence[str]) -> list[str]:
    """The tasks of `parent`'s lineage other than the run's own, in lineage order."""
    lineage = bundle.read_version_info(parent).lineage_tasks if parent else []
    return [t for t in dict.fromkeys(lineage) if t not in new_tasks]


def task_train_records(
    bundle: Any, recipe: Any, parent: str, task: str, *, data_dir: Path, option: str
) -> tuple[list[Any], str | None]:
    """(earlier task `task`'s train records as `recipe` defines the task, the version whose
    data.json vouches for them); refuses a task the recipe lacks, data that is gone or has
    changed since, naming `option` (the strategy that needs the data) in the hint."""
    from medqwen_cli.data.readers import load_records

    try:
        specs = recipe.task_datasets(task)
    except RecipeError as exc:
        raise RecipeError(
            f"cannot read earlier task {task!r} for {option}: {exc.message}",
            f"define the task in the recipe (--recipe) as it was trained, or continue "
            f"without {option}",
        ) from None
    records = []
    for spec in specs:
        try:
            records.append(
                load_records(
                    spec, spec.split, cache_dir=data_dir,
                    max_image_pixels=recipe.train.max_image_pixels,
                )[: spec.max_samples]
            )  # fmt: skip
        except MedqwenError as exc:
            raise DataError(
                f"cannot read earlier task {task!r} for {option} from {spec.path}: {exc.message}",
                f"restore the data the task was trained on, or continue without {option}",
            ) from None
    checked = _check_unchanged(bundle, parent, task, specs, records, option)
    return [r for part in records for r in part], checked


def _check_unchanged(
    bundle: Any,
    parent: str,
    task: str,
    specs: Sequence[Any],
    records: Sequence[Sequence[Any]],
    option: str = "--replay",
) -> str | None:
    """The version whose `data.json` vouches for `task`'s data (the latest in the lineage that
    trained it), or None when that version predates data.json; refuses changed data."""
    for entry in reversed(bundle.lineage(parent)):
        if task not in entry.tasks:
            continue
        if DATA_FILE not in bundle.read_version_info(entry.id).files:
            return None
        recorded = [
            d for d in bundle.read_json(DATA_FILE, entry.id)["datasets"] if d["task"] == task
        ]
        now = [(s.path, len(r), data_digest(r)) for s, r in zip(specs, records, strict=True)]
        if len(recorded) != len(now):
            raise DataError(
                f"earlier task {task!r} was trained in {entry.id} on {len(recorded)} dataset(s) "
                f"({', '.join(d['path'] for d in recorded)}); the recipe now gives {len(now)} "
                f"({', '.join(p for p, _, _ in now)})",
                "define the task as it was trained (its recipe: `medqwen inspect`), or continue "
                f"without {option}",
            )
        for old, (path, n, digest) in zip(recorded, now, strict=True):
            if old["sha256"] != digest:
                raise DataError(
                    f"earlier task {task!r}: the data at {path} has changed since {entry.id} "
                    f"trained on it ({n} records now, {old['records']} then; digest "
                    f"{digest[:12]} now, {old['sha256'][:12]} then)",
                    f"restore the data as it was, or continue without {option}",
                )
        return entry.id
    return None

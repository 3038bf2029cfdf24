"""Replay: every batch of the new task carries records of the lineage's earlier tasks.

With replay fraction f (recipe `continual.replay`, `continue --replay f`) and micro-batch size b,
each micro-batch holds

    r = ceil(f * b) replayed records (at least one when f > 0)   and   b - r new-task records,

the replayed ones drawn round-robin over the earlier tasks (equal weight per task, whatever
their sizes) and, within a task, from fresh permutations of its pool (no record repeats before
the pool is used up). The pool of an earlier task is its train split as the run's recipe
defines the task, or, with `continual.replay_per_task = N`, a fixed buffer of N of those records
drawn once with the run's seed (the hospital setting where only a sample of old data is kept).

Records are referenced, never copied: the version stores the strategy, the fraction and the
replayed records' ids (`continual.json`, ids only). Every version also records a digest of the
data it trained on (`data.json`, `data_record`); a later replay recomputes it and refuses an
earlier task whose data has changed (or is gone) since, naming the task and the path.

The sampler (`ReplayMix`) composes two regime samplers, one over the new task's datasets and
one over the pools, each sharded by process like any other (`data.regimes`); its state (both
positions) goes into checkpoints, so a resumed run draws exactly what it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medqwen_cli.errors import DataError, MedqwenError, RecipeError

DATA_FILE = "data.json"  # in every version: what it trained on (digests, no record text)
CONTINUAL_FILE = "continual.json"  # in a version trained with a strategy: its settings and ids
_BUFFER_SALT = 7919  # separates the buffer's random stream from the data order's
_OLD_SEED_SALT = 1_000_003  # the replay order's seed: train.seed + this


def replayed_per_batch(fraction: float, batch_size: int) -> int:
    """r = ceil(f * b), and at least 1 when f > 0 (0 when f = 0)."""
    if fraction <= 0:
        return 0
    return max(1, math.ceil(fraction * batch_size - 1e-9))


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


# --------------------------------------------------------------------------- the plan


@dataclass
class ReplayPlan:
    """What a replay run mixes in; decided before any model loads (`plan_replay`)."""

    fraction: float
    per_task: int | None  # buffer size per earlier task; None: every record
    per_batch: int  # replayed records per micro-batch
    batch_size: int
    tasks: list[str]  # earlier tasks, in lineage order
    pools: list[list[Any]]  # per earlier task: the records replay draws from
    checked: dict[str, str | None] = field(default_factory=dict)  # task -> version checked against

    def to_json(self) -> dict[str, Any]:
        """`continual.json` of the version: settings and the replayed records' ids only."""
        return {
            "strategy": "replay",
            "replay": self.fraction,
            "replay_per_task": self.per_task,
            "replayed_per_batch": self.per_batch,
            "batch_size": self.batch_size,
            "tasks": {
                t: {
                    "records": len(pool),
                    "ids": [r.id for r in pool],
                    "data_checked_against": self.checked.get(t),
                }  # fmt: skip
                for t, pool in zip(self.tasks, self.pools, strict=True)
            },
        }

    def summary(self) -> dict[str, Any]:
        """For the run's result: the settings and pool sizes, no ids."""
        return {
            "strategy": "replay", "replay": self.fraction, "replay_per_task": self.per_task,
            "replayed_per_batch": self.per_batch, "batch_size": self.batch_size,
            "tasks": {t: len(p) for t, p in zip(self.tasks, self.pools, strict=True)},
        }  # fmt: skip


def plan_replay(
    bundle: Any,
    recipe: Any,
    parent: str | None,
    new_tasks: Sequence[str],
    *,
    data_dir: Path,
) -> ReplayPlan | None:
    """The replay of a run on `parent` training `new_tasks`, or None when the recipe asks for
    none. Reads the earlier tasks' train records and checks them against the digests their
    versions recorded; every refusal is one MedqwenError with a hint."""
    cfg, batch = recipe.continual, recipe.train.batch_size
    if cfg.replay == 0:
        if cfg.replay_per_task is not None:
            raise RecipeError(
                f"continual.replay_per_task={cfg.replay_per_task} is set but continual.replay is 0",
                "give the share of each batch to replay, e.g. `--replay 0.1`",
            )
        return None
    per_batch = replayed_per_batch(cfg.replay, batch)
    if per_batch >= batch:
        raise RecipeError(
            f"replay {cfg.replay} of a batch of {batch} replays {per_batch} of {batch} records "
            "and leaves none for the new task",
            "raise train.batch_size (e.g. --set train.batch_size=8) or lower --replay",
        )
    lineage = bundle.read_version_info(parent).lineage_tasks if parent else []
    earlier = earlier_tasks(bundle, parent, new_tasks)
    if not earlier:
        trained = (
            f"trained only {', '.join(lineage)}, the task of this run"
            if lineage
            else ("trained no task yet")
        )
        raise RecipeError(
            f"--replay replays the earlier tasks of the lineage, and version {parent or '(none)'} has "
            f"{trained}: nothing to replay",
            "train a first task (`medqwen continue --task A`), then "
            "`medqwen continue --task B --replay 0.1`",
        )
    tasks, pools, checked = [], [], {}
    for index, task in enumerate(earlier):
        pool, checked[task] = task_train_records(
            bundle, recipe, parent, task, data_dir=data_dir, option="--replay"
        )
        if cfg.replay_per_task is not None and cfg.replay_per_task < len(pool):
            rng = np.random.default_rng([recipe.train.seed, _BUFFER_SALT, index])
            keep = np.sort(rng.choice(len(pool), size=cfg.replay_per_task, replace=False))
            pool = [pool[i] for i in keep]
        tasks.append(task)
        pools.append(pool)
    return ReplayPlan(cfg.replay, cfg.replay_per_task, per_batch, batch, tasks, pools, checked)


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


def version_strategy(bundle: Any, version: str) -> str:
    """How `version` kept earlier tasks, in words: `none`, `replay 0.1, 50 per task`, or
    `protect 0.99, branch 1`."""
    if CONTINUAL_FILE not in bundle.read_version_info(version).files:
        return "none"
    record = bundle.read_json(CONTINUAL_FILE, version)
    if record.get("strategy") == "protect":
        protected = record.get("protected_tasks") or []
        if not protected:
            return f"protect {record['protect_energy']}: basis recorded"
        return f"protect {record['protect_energy']}, branch {record['branches']}"
    if record.get("strategy") != "replay":
        return str(record.get("strategy"))
    per_task = record.get("replay_per_task")
    return f"replay {record['replay']}" + (f", {per_task} per task" if per_task else "")


# --------------------------------------------------------------------------- the sampler


class ReplayMix:
    """Per micro-batch of `batch_size` draws: `batch_size - per_batch` from `new`, then
    `per_batch` from `old` with its dataset indices shifted by `offset` (the pools follow the
    new task's datasets in the record lists). Endless; resumable through its state."""

    def __init__(self, new: Any, old: Any, *, batch_size: int, per_batch: int, offset: int):
        if not 0 < per_batch < batch_size:
            raise DataError(f"{per_batch} replayed records do not fit a batch of {batch_size}")
        self.new, self.old = new, old
        self.batch_size, self.per_batch, self.offset = batch_size, per_batch, offset
        self.drawn = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        new, old = _endless(self.new), _endless(self.old)
        while True:
            if self.drawn % self.batch_size < self.batch_size - self.per_batch:
                d, i = next(new)
            else:
                d, i = next(old)
                d += self.offset
            self.drawn += 1
            yield d, i

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "replay", "batch_size": self.batch_size, "per_batch": self.per_batch,
            "drawn": self.drawn, "new": self.new.state_dict(), "old": self.old.state_dict(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.batch_size, self.per_batch)
        if (
            state.get("kind") != "replay"
            or (state.get("batch_size"), state.get("per_batch")) != mine
        ):
            raise DataError(
                "cannot resume the data order: the checkpoint was not made with this replay "
                f"({state.get('kind', 'no replay')}, batch {state.get('batch_size')}, "
                f"{state.get('per_batch')} replayed; now batch {mine[0]}, {mine[1]} replayed)",
                "resume with the same recipe, or start a new run (--restart)",
            )
        self.new.load_state_dict(state["new"])
        self.old.load_state_dict(state["old"])
        self.drawn = int(state["drawn"])


def _endless(sampler: Any) -> Iterator[tuple[int, int]]:
    while True:  # each iter() is the rest of one epoch; the next is the next epoch
        yield from sampler


def make_replay_sampler(
    new: Any, plan: ReplayPlan, *, offset: int, seed: int, rank: int, world: int
) -> ReplayMix:
    """`new` (the new task's regime sampler, sharded) mixed with the plan's pools: round-robin
    over the earlier tasks, sharded the same way."""
    from medqwen_cli.data.regimes import RegimeSampler

    sizes = [len(p) for p in plan.pools]
    old = RegimeSampler(
        sizes, "round_robin", seed=seed + _OLD_SEED_SALT, rank=rank, world_size=world,
        epoch_length=max(sum(sizes), world),
    )  # fmt: skip
    return ReplayMix(new, old, batch_size=plan.batch_size, per_batch=plan.per_batch, offset=offset)

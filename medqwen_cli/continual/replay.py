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
replayed records' ids (`continual.json`, ids only). The earlier tasks' data is checked against
the digests their versions recorded (continual/lineage.py): changed or missing data is refused,
naming the task and the path.

The sampler (`ReplayMix`) composes two regime samplers, one over the new task's datasets and
one over the pools, each sharded by process like any other (`data.regimes`); its state (both
positions) goes into checkpoints, so a resumed run draws exactly what it would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medqwen_cli.continual.lineage import earlier_tasks, task_train_records
from medqwen_cli.continual.record import ReplayedTask, ReplayRecord
from medqwen_cli.continual.strategy import Mix, Strategy
from medqwen_cli.errors import DataError, RecipeError

_BUFFER_SALT = 7919  # separates the buffer's random stream from the data order's
_OLD_SEED_SALT = 1_000_003  # the replay order's seed: train.seed + this


def replayed_per_batch(fraction: float, batch_size: int) -> int:
    """r = ceil(f * b), and at least 1 when f > 0 (0 when f = 0)."""
    if fraction <= 0:
        return 0
    return max(1, math.ceil(fraction * batch_size - 1e-9))


# --------------------------------------------------------------------------- the plan


@dataclass
class ReplayStrategy(Strategy):
    """What a replay run mixes in; decided before any model loads (`plan_replay`)."""

    fraction: float
    per_task: int | None  # buffer size per earlier task; None: every record
    per_batch: int  # replayed records per micro-batch
    batch_size: int
    tasks: list[str]  # earlier tasks, in lineage order
    pools: list[list[Any]]  # per earlier task: the records replay draws from
    checked: dict[str, str | None] = field(default_factory=dict)  # task -> version checked against
    name = "replay"

    def sampler(
        self,
        new: Any,
        records: list[list[Any]],
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world: int,
    ) -> Mix:
        """`new` mixed with the pools, which follow the new task's datasets in the records."""
        mixed = make_replay_sampler(
            new, self, offset=len(records), seed=seed, rank=rank, world=world
        )
        return Mix(mixed, [*records, *self.pools], batch_size - self.per_batch)

    def record(self, model: Any = None) -> ReplayRecord:
        """`continual.json` of the version: settings and the replayed records' ids only."""
        return ReplayRecord(
            replay=self.fraction, replay_per_task=self.per_task, replayed_per_batch=self.per_batch,
            batch_size=self.batch_size,
            tasks={
                t: ReplayedTask(records=len(pool), ids=[r.id for r in pool],
                                data_checked_against=self.checked.get(t))
                for t, pool in zip(self.tasks, self.pools, strict=True)
            },
        )  # fmt: skip

    def summary(self, model: Any = None) -> dict[str, Any]:
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
) -> ReplayStrategy | None:
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
    return ReplayStrategy(cfg.replay, cfg.replay_per_task, per_batch, batch, tasks, pools, checked)


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
    new: Any, plan: ReplayStrategy, *, offset: int, seed: int, rank: int, world: int
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

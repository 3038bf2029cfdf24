"""The data phase of a run: the new task's records, the sampler over them, the run's length.

The datasets of the plan are read (each capped at its max_samples), a regime sampler is sharded
for this process, and the run's continual strategy wraps it (replay mixes earlier tasks'
records into every batch: `Strategy.sampler`). Without train.max_steps a run lasts the steps
that show the new task's records `epochs` times; what the strategy adds comes on top.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medqwen_cli.continual import data_record
from medqwen_cli.errors import TrainingError
from medqwen_cli.recipe import DatasetSpec

if TYPE_CHECKING:
    from medqwen_cli.training.plan import TrainPlan


@dataclass
class TrainData:
    """The records of each dataset, the sampler over them and the run's length in steps."""

    records: list[list[Any]]  # the new task's datasets, then what the strategy adds (if any)
    sampler: Any
    total_steps: int
    data: dict[str, Any]  # data.json of the version: what the new task's datasets held
    new: list[Any]  # the new task's records, every dataset in order

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
    mix = plan.strategy.sampler(
        sampler, records, batch_size=cfg.batch_size, seed=cfg.seed,
        rank=accelerator.process_index, world=accelerator.num_processes,
    )  # fmt: skip
    new = [r for part in records for r in part]
    total_steps = _steps(cfg, len(new), accelerator.num_processes, mix.new_per_batch)
    return TrainData(mix.records, mix.sampler, total_steps, data, new)


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

"""The interface every continual strategy implements: one method per phase of a run.

A `train` or `continue` run (training/run.py) calls, in this order:

    plan        `plan_strategy`, before any model loads: the strategy the recipe asks for,
                with everything it needs from the lineage (earlier tasks, their data checked
                against the versions' digests, stored bases); every refusal happens here
    sampler     wraps the new task's sampler (replay mixes earlier records into each batch; a
                strategy that also replays, such as protect with --replay, uses its `replay`'s)
    prepare     on the loaded parent model, before training (protect adds its branches)
    after_step  after every optimizer step (protect puts its branches back in their complement)
    finish      on the trained model, with the new task's train records (protect adds the
                task's basis)
    summary     the run's result: settings and sources, no record ids; `notes`: its warnings
    record      the version's `continual.json` (a typed record, continual/record.py) and the
    files       files the version stores beside it

`run.py` and the loop call these and never name a strategy. The default, `Strategy` itself, is
`none`: every phase does nothing and the version has no continual record. A new strategy is one
module with one subclass, and one line in `plan_strategy` (continual/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Mix:
    """What the data phase trains on: a sampler over `records` (the new task's datasets first,
    then whatever the strategy adds), and how many records of each micro-batch are new."""

    sampler: Any
    records: list[list[Any]]
    new_per_batch: int


class Strategy:
    """`none`: the new task alone."""

    name = "none"
    replay: Strategy | None = None  # a strategy that also replays draws its batches from this

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
        """The run's sampler, from `new` (the regime sampler over the new task's `records`):
        the new task alone, or the replay's mix when the strategy also replays."""
        if self.replay is not None:
            return self.replay.sampler(
                new, records, batch_size=batch_size, seed=seed, rank=rank, world=world
            )
        return Mix(new, records, batch_size)

    def prepare(self, model: Any, *, bundle: Any, processor: Any, device: Any) -> None:
        """Change the loaded parent model before training (nothing by default)."""

    def after_step(self, model: Any) -> None:
        """Called after every optimizer step (nothing by default)."""

    def finish(self, model: Any, records: list[Any]) -> None:
        """Called on the trained model with the new task's train records (nothing by default)."""

    def notes(self) -> list[str]:
        """Warnings for the run's result, one line each (none by default)."""
        return []

    def summary(self, model: Any) -> dict[str, Any] | None:
        """The run result's `continual` field: None without a strategy."""
        return None

    def record(self, model: Any) -> Any:
        """The version's continual record (continual/record.py), or None."""
        return None

    def files(self, run_dir: Path) -> dict[str, Path]:
        """Files the version stores besides its adapter, written under `run_dir`: name -> path."""
        return {}

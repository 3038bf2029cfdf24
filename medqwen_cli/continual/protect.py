"""Protected branches, the plan (DESIGN.md §2b; the maths and the torch side are in bases.py).

With `continual.protect` (`continue --protect`), a run

1. starts from the earlier tasks' input bases: the parent version's `protect.safetensors` when
   it covers them, otherwise computed before training from each missing task's train records
   (a seeded sample of `protect_records`, data checked against its version's digest, as replay
   checks it), on the parent model;
2. freezes every adapter tensor so far and trains one new branch per adapted layer in the
   complement of those bases (none when the lineage has no earlier task: the first task of a
   protected sequence just trains);
3. after training, adds its own task's basis (on the trained model) and stores every basis in
   the new version's `protect.safetensors`, so the next `--protect` needs no old data. Bases are
   derived statistics (directions of layer inputs), not records.

`continual.json` of the version says which tasks the bases cover and where each came from, the
records (ids only), the energy, each group's basis size, and how much of the new task's input
energy already lay inside the earlier tasks' bases (what limits plasticity). Nothing here
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medqwen_cli.continual.replay import CONTINUAL_FILE, earlier_tasks, task_train_records
from medqwen_cli.errors import DataError, RecipeError

PROTECT_FILE = "protect.safetensors"  # in a protected version: the input bases per layer group
_SAMPLE_SALT = 104_729  # separates the basis sample's random stream from the others


@dataclass
class ProtectPlan:
    """What a protected run builds on; decided before any model loads (`plan_protect`)."""

    energy: float
    records: int  # records per task for a basis
    earlier: list[str]  # the lineage's earlier tasks: the new branch is protected against them
    stored_from: str | None  # version whose protect.safetensors covers `stored_tasks`
    stored_tasks: list[str]
    # earlier tasks without a stored basis: (task, sampled train records, version vouching)
    from_data: list[tuple[str, list[Any], str | None]] = field(default_factory=list)
    seed: int = 0  # the samples' seed (train.seed)

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": "protect",
            "protect_energy": self.energy,
            "protected_tasks": self.earlier,
            "bases_from": {
                **{t: f"version {self.stored_from}" for t in self.stored_tasks},
                **{t: f"data ({len(r)} records)" for t, r, _ in self.from_data},
            },
        }


def sample(records: list[Any], count: int, seed: int, index: int) -> list[Any]:
    """A seeded sample of `count` records (all of them when there are fewer), in data order."""
    if count >= len(records):
        return list(records)
    rng = np.random.default_rng([seed, _SAMPLE_SALT, index])
    return [records[i] for i in np.sort(rng.choice(len(records), size=count, replace=False))]


def stored_bases(bundle: Any, parent: str | None) -> tuple[str | None, list[str]]:
    """(the latest version of `parent`'s lineage that stored bases, the tasks they cover)."""
    if parent is None:
        return None, []
    for entry in reversed(bundle.lineage(parent)):
        if PROTECT_FILE in bundle.read_version_info(entry.id).files:
            return entry.id, list(bundle.read_json(CONTINUAL_FILE, entry.id)["bases"]["tasks"])
    return None, []


def plan_protect(
    bundle: Any,
    recipe: Any,
    parent: str | None,
    new_tasks: list[str],
    *,
    data_dir: Path,
) -> ProtectPlan | None:
    """The protection of a run on `parent` training `new_tasks`, or None
    when the recipe asks for none; reads the train records of every earlier task no stored basis
    covers, or fails naming the task and its path."""
    cfg = recipe.continual
    if not cfg.protect:
        return None
    if cfg.replay > 0:
        raise RecipeError(
            "--protect and --replay together are not supported yet",
            "choose one: --protect needs no old data after its bases are stored, --replay needs "
            "the old data every run",
        )
    seed = recipe.train.seed
    earlier = earlier_tasks(bundle, parent, new_tasks)
    version, covered = stored_bases(bundle, parent)
    stored = [t for t in covered if t in earlier]
    from_data = []
    for index, task in enumerate(earlier):
        if task in stored:
            continue
        assert parent is not None  # an earlier task has a version
        try:
            records, checked = task_train_records(
                bundle, recipe, parent, task, data_dir=data_dir, option="--protect"
            )
        except (DataError, RecipeError) as exc:
            raise type(exc)(
                f"{exc.message}; no version of the lineage stored task {task!r}'s input basis, "
                "so --protect needs its data once",
                exc.hint,
            ) from None
        from_data.append((task, sample(records, cfg.protect_records, seed, index), checked))
    return ProtectPlan(
        energy=cfg.protect_energy, records=cfg.protect_records, earlier=earlier,
        stored_from=version if stored else None, stored_tasks=stored, from_data=from_data,
        seed=seed,
    )  # fmt: skip

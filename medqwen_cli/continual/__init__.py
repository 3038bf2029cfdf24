"""Continual strategies: what a `continue` run does to keep the lineage's earlier tasks.

    none     the default: the new task alone (every method here forgets a contradicted task)
    replay   replay.py: each batch mixes in records of the earlier tasks (`continual.replay`)
    protect  protect.py: a new branch per layer that cannot move the earlier tasks' layer
             inputs (`continual.protect`), with no old data once their bases are stored; with
             replay too, the branch trains on batches that mix in earlier records

strategy   the interface: one method per phase of a run; `plan_strategy` (here) picks one
lineage    the earlier tasks, the data each version trained on (`data.json`) and its checks
record     the version's `continual.json`, one typed model
subspace   the bases' maths (Gram matrices, energies, growth, complement): pure torch

Nothing imported here loads torch; `subspace` and the protect phases import it when they run.
"""

from pathlib import Path
from typing import Any

from medqwen_cli.continual.lineage import DATA_FILE, data_digest, data_record
from medqwen_cli.continual.protect import ProtectStrategy, plan_protect
from medqwen_cli.continual.record import (
    CONTINUAL_FILE,
    PROTECT_FILE,
    ProtectRecord,
    ReplayRecord,
    read_record,
    version_strategy,
)
from medqwen_cli.continual.replay import ReplayMix, ReplayStrategy, plan_replay, replayed_per_batch
from medqwen_cli.continual.strategy import Mix, Strategy

__all__ = [
    "CONTINUAL_FILE",
    "DATA_FILE",
    "PROTECT_FILE",
    "Mix",
    "ProtectRecord",
    "ProtectStrategy",
    "ReplayMix",
    "ReplayRecord",
    "ReplayStrategy",
    "Strategy",
    "data_digest",
    "data_record",
    "plan_strategy",
    "read_record",
    "replayed_per_batch",
    "version_strategy",
]


def plan_strategy(
    bundle: Any, recipe: Any, parent: str | None, new_tasks: list[str], *, data_dir: Path
) -> Strategy:
    """The strategy of a run on `parent` training `new_tasks`, as the recipe's `continual`
    section asks; reads what it needs of the lineage, or fails naming the problem."""
    replay = plan_replay(bundle, recipe, parent, new_tasks, data_dir=data_dir)
    protect = plan_protect(bundle, recipe, parent, new_tasks, data_dir=data_dir)
    if protect is not None:  # with replay too: protect's branch trains on the mixed batches
        protect.replay = replay
        return protect
    return replay if replay is not None else Strategy()

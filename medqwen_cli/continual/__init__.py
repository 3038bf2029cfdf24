"""Continual strategies: what a `continue` run does to keep the lineage's earlier tasks.

    none     the default: the new task alone (every method here forgets a contradicted task)
    replay   replay.py: each batch mixes in records of the earlier tasks (recipe `continual.replay`)

The data a version trained on is recorded in its `data.json` (`data_digest`), so a later replay
can tell that an earlier task's data is gone or has changed. Nothing here imports torch.
"""

from medqwen_cli.continual.replay import (
    CONTINUAL_FILE,
    DATA_FILE,
    ReplayMix,
    ReplayPlan,
    data_digest,
    data_record,
    make_replay_sampler,
    plan_replay,
    replayed_per_batch,
    version_strategy,
)

__all__ = [
    "CONTINUAL_FILE",
    "DATA_FILE",
    "ReplayMix",
    "ReplayPlan",
    "data_digest",
    "data_record",
    "make_replay_sampler",
    "plan_replay",
    "replayed_per_batch",
    "version_strategy",
]

"""How several datasets mix in one run: a deterministic, resumable, shardable sampler.

`RegimeSampler(sizes, regime, weights=..., seed=..., rank=..., world_size=...)` yields
`(dataset index, record index)` pairs. One epoch is a global sequence of `epoch_length`
draws (default: the total number of records), a pure function of (seed, epoch):

- `mixed`: every record exactly once, in a random order (datasets proportional to size);
- `weighted`: each draw picks dataset i with p_i = w_i / sum(w) (`DatasetSpec.weight`);
- `temperature`: p_i proportional to size_i^(1/T) (T = 1 is `mixed`'s proportions, large T
  tends to uniform);
- `round_robin`: datasets in turn 0, 1, ..., K-1, 0, ...;
- `sequential`: all of dataset 0 (shuffled), then all of dataset 1, ... in every epoch (a
  curriculum inside one run; a sequence of tasks that should each finish before the next is
  `medqwen continue`, one run per task).

Within a dataset, records are drawn from a shuffled permutation without replacement; a dataset
drawn more often than its size in an epoch starts a new permutation (so small datasets are
repeated, never sampled with replacement inside a pass).

Sharding: process `rank` of `world_size` takes global positions rank, rank + W, ... so the
processes see disjoint samples; with `drop_last` (default) the tail that does not fill every
process is dropped, otherwise it is padded with the first positions (every process gets the
same number of steps either way).

Resume: `state_dict()` is `{"epoch", "position", ...}` of plain ints and lists, where position
counts the samples this process has consumed in the epoch; `load_state_dict()` continues with
exactly the remaining sequence. With a DataLoader that prefetches, pass the number of samples
actually consumed: `state_dict(consumed=steps * batch_size)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medqwen_cli.errors import DataError
from medqwen_cli.recipe import RegimeConfig

STATE_VERSION = 1


class RegimeSampler:
    """Yields (dataset index, record index); see the module docstring."""

    def __init__(
        self,
        sizes: Sequence[int],
        regime: RegimeConfig | str = "mixed",
        *,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_length: int | None = None,
        drop_last: bool = True,
    ) -> None:
        config = regime if isinstance(regime, RegimeConfig) else RegimeConfig(kind=regime)
        self.kind = config.kind
        self.temperature = config.temperature
        self.sizes = [int(n) for n in sizes]
        if not self.sizes or any(n < 1 for n in self.sizes):
            raise DataError(
                f"regime {self.kind!r} needs at least one dataset and no empty dataset "
                f"(sizes {self.sizes})",
                "check that every dataset of the task has records for this split",
            )
        if weights is not None and (
            len(weights) != len(self.sizes) or any(not w > 0 for w in weights)
        ):
            raise DataError(
                f"weights {list(weights)} do not match the {len(self.sizes)} datasets",
                "give one positive weight per dataset",
            )
        self.weights = (
            [float(w) for w in weights] if weights is not None else [1.0] * len(self.sizes)
        )
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch_length = int(epoch_length) if epoch_length is not None else sum(self.sizes)
        if self.epoch_length < 1:
            raise DataError(f"epoch_length must be at least 1, got {epoch_length}")
        if drop_last and self.epoch_length < world_size:
            raise DataError(
                f"{self.epoch_length} samples per epoch cannot feed {world_size} processes",
                "add records, set a larger epoch_length, or use fewer processes",
            )
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------ the sequence

    def probabilities(self) -> list[float]:
        """Expected share of each dataset in an epoch."""
        sizes = np.asarray(self.sizes, dtype=np.float64)
        if self.kind == "weighted":
            p = np.asarray(self.weights)
        elif self.kind == "temperature":
            p = sizes ** (1.0 / self.temperature)
        elif self.kind == "round_robin":
            p = np.ones_like(sizes)
        else:  # mixed, sequential
            p = sizes
        return (p / p.sum()).tolist()

    def global_epoch(self, epoch: int) -> np.ndarray:
        """(epoch_length, 2) int64 array of (dataset, record) for every process together."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        n, k = self.epoch_length, len(self.sizes)
        if self.kind == "mixed" and n == sum(self.sizes):
            datasets = np.repeat(np.arange(k), self.sizes)
            order = rng.permutation(n)
            datasets = datasets[order]
        elif self.kind in ("mixed", "weighted", "temperature"):
            datasets = rng.choice(k, size=n, p=self.probabilities())
        elif self.kind == "round_robin":
            datasets = np.arange(n) % k
        else:  # sequential: each dataset in full (scaled when epoch_length is not the total)
            if n == sum(self.sizes):
                counts = np.asarray(self.sizes, dtype=np.int64)
            else:
                counts = np.floor(np.asarray(self.probabilities()) * n).astype(np.int64)
                counts[: n - int(counts.sum())] += 1
            datasets = np.repeat(np.arange(k), counts)
        records = np.empty(n, dtype=np.int64)
        for d in range(k):
            where = np.flatnonzero(datasets == d)
            records[where] = _draws(rng, self.sizes[d], len(where))
        sequence = np.stack([datasets.astype(np.int64), records], axis=1)
        self._cache = (epoch, sequence)
        return sequence

    def _local_positions(self) -> np.ndarray:
        n, w = self.epoch_length, self.world_size
        per_rank = n // w if self.drop_last else -(-n // w)
        positions = self.rank + w * np.arange(per_rank)
        return positions % n  # padding wraps around to the first positions

    def __len__(self) -> int:
        """Samples this process gets per epoch."""
        return len(self._local_positions())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The rest of the current epoch; at its end the sampler moves to the next epoch."""
        sequence = self.global_epoch(self.epoch)
        positions = self._local_positions()
        while self.position < len(positions):
            d, i = sequence[positions[self.position]]
            self.position += 1
            yield int(d), int(i)
        self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (DistributedSampler-style)."""
        self.epoch, self.position = int(epoch), 0

    # ------------------------------------------------------------------ resume

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": self.kind,
            "sizes": list(self.sizes),
            "seed": self.seed,
            "world_size": self.world_size,
            "epoch_length": self.epoch_length,
            "epoch": self.epoch,
            "position": self.position if consumed is None else int(consumed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off; refuses a state of different data or settings."""
        mismatched = [
            key
            for key, mine in (
                ("kind", self.kind),
                ("sizes", list(self.sizes)),
                ("seed", self.seed),
                ("world_size", self.world_size),
                ("epoch_length", self.epoch_length),
            )
            if state.get(key) != mine
        ]
        if mismatched:
            raise DataError(
                "cannot resume the data order: "
                + ", ".join(
                    f"{key} was {state.get(key)!r}, now {getattr(self, key) if key != 'sizes' else self.sizes!r}"
                    for key in mismatched
                ),
                "resume with the same datasets, regime, seed and number of processes, "
                "or start a new run",
            )
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise DataError(f"sampler position {position} outside the epoch of {len(self)} samples")
        self.epoch, self.position = int(state["epoch"]), position


def _draws(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """`count` record indices of a dataset of `size`: concatenated fresh permutations."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    passes = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]


class RecordPool:
    """Datasets of records addressed by the sampler's (dataset, record) pairs, for a DataLoader:
    `DataLoader(RecordPool(datasets), sampler=sampler, collate_fn=collator)`."""

    def __init__(self, datasets: Sequence[Sequence[Any]]) -> None:
        self.datasets = [list(d) for d in datasets]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        d, i = key
        return self.datasets[d][i]

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]

"""RegimeSampler: proportions, determinism, exact mid-epoch resume, disjoint shards."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from medqwen_cli.data import RecordPool, RegimeSampler
from medqwen_cli.errors import DataError
from medqwen_cli.recipe import RegimeConfig

SIZES = [600, 300, 100]


def _shares(sampler: RegimeSampler, epochs: int = 3) -> np.ndarray:
    counts: Counter[int] = Counter()
    for _ in range(epochs):
        counts.update(d for d, _ in sampler)
    total = sum(counts.values())
    return np.array([counts[d] / total for d in range(len(SIZES))])


@pytest.mark.parametrize(
    ("regime", "weights", "expected"),
    [
        ("mixed", None, [0.6, 0.3, 0.1]),
        ("weighted", [1.0, 1.0, 2.0], [0.25, 0.25, 0.5]),
        (
            RegimeConfig(kind="temperature", temperature=2.0),
            None,
            np.sqrt(SIZES) / np.sqrt(SIZES).sum(),
        ),
        ("round_robin", None, [1 / 3, 1 / 3, 1 / 3]),
        ("sequential", None, [0.6, 0.3, 0.1]),
    ],
    ids=["mixed", "weighted", "temperature", "round_robin", "sequential"],
)
def test_proportions(regime, weights, expected) -> None:
    sampler = RegimeSampler(SIZES, regime, weights=weights, seed=1)
    assert len(sampler) == sum(SIZES)  # epoch = total records
    shares = _shares(sampler)
    np.testing.assert_allclose(shares, expected, atol=0.025)
    np.testing.assert_allclose(sampler.probabilities(), expected, atol=1e-9)


def test_mixed_and_sequential_visit_every_record_once_per_epoch() -> None:
    for kind in ("mixed", "sequential"):
        pairs = list(RegimeSampler(SIZES, kind, seed=3))
        assert sorted(pairs) == [(d, i) for d, n in enumerate(SIZES) for i in range(n)]
    sequential = [d for d, _ in RegimeSampler(SIZES, "sequential", seed=3)]
    assert sequential == sorted(sequential)  # one dataset after another


def test_round_robin_alternates_and_repeats_small_datasets_without_replacement() -> None:
    pairs = list(RegimeSampler([5, 2], "round_robin", seed=0, epoch_length=8))
    assert [d for d, _ in pairs] == [0, 1] * 4
    small = [i for d, i in pairs if d == 1]
    assert sorted(small[:2]) == [0, 1] and sorted(small[2:]) == [
        0,
        1,
    ]  # fresh permutation each pass


def test_deterministic_for_a_seed_and_new_order_each_epoch() -> None:
    a = RegimeSampler(SIZES, "weighted", weights=[1, 2, 3], seed=7)
    b = RegimeSampler(SIZES, "weighted", weights=[1, 2, 3], seed=7)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) != first_a  # epoch 1 differs from epoch 0
    assert list(RegimeSampler(SIZES, "weighted", weights=[1, 2, 3], seed=8)) != first_a


@pytest.mark.parametrize("kind", ["mixed", "weighted", "temperature", "round_robin", "sequential"])
def test_resume_mid_epoch_gives_exactly_the_rest(kind: str) -> None:
    full = RegimeSampler(SIZES, kind, seed=5)
    reference = list(full) + list(full)  # two epochs
    run = RegimeSampler(SIZES, kind, seed=5)
    iterator = iter(run)
    seen = [next(iterator) for _ in range(437)]
    state = json.loads(json.dumps(run.state_dict()))  # plain JSON
    assert state["epoch"] == 0 and state["position"] == 437
    resumed = RegimeSampler(SIZES, kind, seed=5)
    resumed.load_state_dict(state)
    assert seen + list(resumed) + list(resumed) == reference


def test_resume_with_consumed_count_and_after_epoch_boundary() -> None:
    reference = RegimeSampler([10, 10], "mixed", seed=0)
    epoch0, epoch1 = list(reference), list(reference)
    prefetching = RegimeSampler([10, 10], "mixed", seed=0)
    iterator = iter(prefetching)
    for _ in range(7):  # a DataLoader pulled 7 indices, the loop consumed 4
        next(iterator)
    resumed = RegimeSampler([10, 10], "mixed", seed=0)
    resumed.load_state_dict(prefetching.state_dict(consumed=4))
    assert list(resumed) == epoch0[4:]
    finished = RegimeSampler([10, 10], "mixed", seed=0)
    list(finished)
    assert (finished.state_dict()["epoch"], finished.state_dict()["position"]) == (1, 0)
    resumed.load_state_dict(finished.state_dict())
    assert list(resumed) == epoch1


def test_resume_refuses_other_data() -> None:
    state = RegimeSampler([10, 20], "mixed", seed=0).state_dict()
    with pytest.raises(DataError, match="sizes was"):
        RegimeSampler([10, 21], "mixed", seed=0).load_state_dict(state)


@pytest.mark.parametrize("kind", ["mixed", "weighted", "round_robin"])
def test_shards_are_disjoint_and_cover_the_epoch(kind: str) -> None:
    sizes, world = [50, 31], 4
    samplers = [RegimeSampler(sizes, kind, seed=2, rank=r, world_size=world) for r in range(world)]
    positions = [set() for _ in range(world)]
    for rank, sampler in enumerate(samplers):
        assert len(sampler) == sum(sizes) // world
        local = sampler._local_positions()
        positions[rank] = set(local.tolist())
        sequence = sampler.global_epoch(0)
        assert list(sampler) == [tuple(map(int, sequence[p])) for p in local]
    union = set().union(*positions)
    assert sum(len(p) for p in positions) == len(union)  # disjoint
    assert len(union) == sum(sizes) - sum(sizes) % world  # only the ragged tail is dropped
    if kind == "mixed":  # every record at most once across all processes
        pairs = [
            pair for s in samplers for pair in s.global_epoch(0)[s._local_positions()].tolist()
        ]
        assert len({tuple(p) for p in pairs}) == len(pairs)


def test_padding_instead_of_dropping() -> None:
    samplers = [
        RegimeSampler([5], "mixed", rank=r, world_size=2, drop_last=False) for r in range(2)
    ]
    assert [len(s) for s in samplers] == [3, 3]


def test_bad_arguments() -> None:
    with pytest.raises(DataError):
        RegimeSampler([], "mixed")
    with pytest.raises(DataError):
        RegimeSampler([3, 0], "mixed")
    with pytest.raises(DataError):
        RegimeSampler([3, 3], "weighted", weights=[1.0])
    with pytest.raises(DataError):
        RegimeSampler([1], "mixed", world_size=2)


def test_record_pool_indexes_by_pairs() -> None:
    pool = RecordPool([["a", "b"], ["c"]])
    assert pool[(1, 0)] == "c" and len(pool) == 3 and pool.sizes == [2, 1]

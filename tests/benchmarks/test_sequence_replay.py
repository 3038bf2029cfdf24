"""sequence_replay.py: which replay share keeps every earlier task, judged over seeds, on
cells made up here (each record right or wrong at each step)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from sequence_replay import replay_shares, share_of  # noqa: E402
from sequence_study import TASKS  # noqa: E402

N = 20  # records per task


def _cell(strategy: str, seed: int, wrong_at_end: int) -> dict:
    """Every task learned to 1.0 when trained; at the end each earlier task has `wrong_at_end`
    of its records wrong."""
    steps = []
    for i, _ in enumerate(TASKS):
        tasks = {}
        for j, task in enumerate(TASKS[: i + 1]):
            wrong = wrong_at_end if (i == len(TASKS) - 1 and j < i) else 0
            oks = [int(k >= wrong) for k in range(N)]
            tasks[task] = {"acc": sum(oks) / N,
                           "records": [[f"{task}-{k}", ok, 0.5] for k, ok in enumerate(oks)]}  # fmt: skip
            tasks[task + "-template"] = tasks[task]
        steps.append({"task": TASKS[i], "scores": {"tasks": tasks}})
    return {"method": "lora", "seed": seed, "strategy": strategy, "steps": steps}


def _groups(cells: list[dict]) -> dict:
    groups: dict = {}
    for c in cells:
        groups.setdefault((c["method"], c["strategy"]), []).append(c)
    return groups


def test_share_names() -> None:
    assert share_of("replay:0.25:50") == (0.25, 50)
    assert share_of("replay:0.5") == (0.5, None)
    assert share_of("protect") is None and share_of("protect:0.9") is None


def test_the_smallest_share_that_keeps_every_task_is_named() -> None:
    cells = [
        *(_cell("replay:0.1:50", s, wrong_at_end=4) for s in range(3)),  # 20 % lost: misses
        *(_cell("replay:0.5:50", s, wrong_at_end=0) for s in range(3)),  # nothing lost
        *(_cell("replay:0.25:50", s, wrong_at_end=0) for s in range(3)),
        # 0 / 5 / 0 % lost: the seed interval reaches past 5 %, so not judged kept
        *(_cell("replay:0.2:50", s, wrong_at_end=[0, 1, 0][s]) for s in range(3)),
    ]
    text = "\n".join(replay_shares(_groups(cells)))
    assert "lora: the smallest share that keeps every task: 0.25." in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert [r.split(" | ")[0] for r in rows] == ["| 0.1", "| 0.2", "| 0.25", "| 0.5"]
    assert [r.rsplit(" | ", 1)[1] for r in rows] == [
        "misses |", "unclear |", "keeps every task |", "keeps every task |",
    ]  # fmt: skip


def test_no_share_keeps_and_one_seed_says_so() -> None:
    cells = [_cell("replay:0.1:50", 0, wrong_at_end=2), _cell("none", 0, wrong_at_end=10)]
    text = "\n".join(replay_shares(_groups(cells)))
    assert "lora: no share run so far keeps every task (tried 0.1)." in text
    assert "| misses (1 seed) |" in text  # 10 % lost on its one seed
    assert replay_shares(_groups([_cell("none", 0, 0)])) == []  # no replay cell: no section


def test_records_lost_are_counted_per_phrasing() -> None:
    from sequence_phrasing import lost_by_phrasing

    cells = []
    for s in range(2):
        cell = _cell("protect", s, wrong_at_end=2)  # 10 % of each earlier task lost, unseen
        last = cell["steps"][-1]["scores"]["tasks"]
        for task in TASKS[:-1]:  # in-template: 4 of 20 lost
            oks = [int(k >= 4) for k in range(N)]
            last[task + "-template"] = {"acc": sum(oks) / N,
                                        "records": [[f"{task}-{k}", ok, 0.5] for k, ok in enumerate(oks)]}  # fmt: skip
        cells.append(cell)
    cells.append(_cell("joint", 0, wrong_at_end=0))  # no sequence: left out
    lines = lost_by_phrasing(_groups(cells))
    rows = [line for line in lines if line.startswith("| lora")]
    assert len(rows) == 1 and rows[0].startswith("| lora | protect | 0,1 |")
    assert rows[0].count("0.100 [0.100, 0.100] / 0.200 [0.200, 0.200]") == len(TASKS) - 1

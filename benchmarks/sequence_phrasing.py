"""The sequence study's phrasing question: does a strategy lose more of an earlier task's records
on phrasings its train split never used than on the train phrasing?

Each task is scored on its unseen-phrasing split after every task, and on its in-template split
just after it was learned and after the last task, so both splits give the records each earlier
task lost over the sequence (right after it was learned, wrong at the end). A protect basis is
made from train-phrased inputs: if it guarded only those, the unseen split would lose more.
Used by sequence_report.py.
"""

from __future__ import annotations

from sequence_report import EARLIER, outcomes, seeds, table
from study_stats import fmt_ci


def lost(cell: dict, task: str, split: str) -> float:
    """Share of `task`'s records on `split` right just after it was learned and wrong at the end."""
    steps = cell["steps"]
    j = EARLIER.index(task)
    then, now = outcomes(steps[j], task + split), outcomes(steps[-1], task + split)
    return sum(then[k] and not now[k] for k in then) / len(then)


def lost_by_phrasing(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """A table: per (method, strategy), per earlier task, records lost on each split."""
    head = ["method", "strategy", "seeds"] + [f"{t} lost: unseen / in-template" for t in EARLIER]
    rows = []
    for (method, strategy), group in groups.items():
        if strategy == "joint":
            continue
        row = [method, strategy, seeds(group)]
        for task in EARLIER:
            unseen = [lost(c, task, "") for c in group]
            template = [lost(c, task, "-template") for c in group]
            row.append(f"{fmt_ci(unseen)} / {fmt_ci(template)}")
        rows.append(row)
    return ["## Records lost by phrasing (seed mean [95 % interval])", "", *table(head, rows), ""]

"""The sequence study's replay question: the smallest share that keeps every earlier task.

A replay cell is named `replay:F:N` (a share F of every batch replayed, from a buffer of N
records per earlier task; `replay:F` replays from every record). A share keeps every task when,
over its seeds, every earlier task's final accuracy is at least 0.95 of its accuracy just after
it was learned and no earlier task lost more than 5 % of its records: the targets protect is
held to. Each condition is judged on the seed interval (met: the whole interval on the good
side; one seed: its value, said so). Used by sequence_report.py.
"""

from __future__ import annotations

from sequence_report import EARLIER, KEPT, LOST, measures, seeds, table, verdict
from study_stats import fmt_ci


def share_of(strategy: str) -> tuple[float, int | None] | None:
    """(F, N) of a replay strategy's name, or None for another strategy."""
    kind, *values = strategy.split(":")
    if kind != "replay" or not 1 <= len(values) <= 2:
        return None
    return float(values[0]), int(values[1]) if len(values) == 2 else None


def keeps(group: list[dict]) -> tuple[list[str], str]:
    """The table cells of one replay share (seeds, ACC, lowest final/learned, most lost) and
    its verdict: `keeps every task`, `misses`, or `unclear`."""
    m = [measures(c) for c in group]
    low = [min(x[f"final/learned {t}"] for t in EARLIER) for x in m]
    lost = [max(x[f"lost {t}"] for t in EARLIER) for x in m]
    judged = [verdict(low, lambda v: v >= KEPT), verdict(lost, lambda v: v <= LOST)]
    one = " (1 seed)" if len(group) == 1 else ""
    if all(j.startswith("met") for j in judged):
        said = "keeps every task" + one
    elif any(j.startswith("missed") for j in judged):
        said = "misses" + one
    else:
        said = "unclear"
    cells = [seeds(group), fmt_ci([x["ACC"] for x in m]), fmt_ci(low), fmt_ci(lost)]
    return cells, said


def replay_shares(groups: dict) -> list[str]:
    """Per method, every replay share run, smallest first, and the smallest that keeps every
    task (or that none does yet)."""
    lines: list[str] = []
    for method in sorted({m for m, _ in groups}):
        shares = sorted(
            ((share_of(s), g) for (m, s), g in groups.items() if m == method and share_of(s)),
            key=lambda x: (x[0][0], x[0][1] or 0),
        )
        if not shares:
            continue
        rows, kept = [], []
        for (share, buffer), group in shares:
            cells, said = keeps(group)
            rows.append([f"{share:g}", "all" if buffer is None else str(buffer), *cells, said])
            if said.startswith("keeps"):
                kept.append(f"{share:g}" + (" (1 seed)" if len(group) == 1 else ""))
        head = ["share", "buffer per task", "seeds", "ACC", "lowest final/learned",
                "most records lost", "verdict"]  # fmt: skip
        tried = ", ".join(r[0] for r in rows)
        answer = (f"the smallest share that keeps every task: {kept[0]}" if kept else
                  f"no share run so far keeps every task (tried {tried})")  # fmt: skip
        lines += [f"{method}: {answer}.", "", *table(head, rows), ""]
    if not lines:
        return []
    return [f"## Replay: the smallest share that keeps every task (final/learned >= {KEPT} and "
            f"at most {LOST:.0%} of records lost, every earlier task)", "", *lines]  # fmt: skip

"""The sequence study's report: from benchmarks/results/sequence-study.json to tables.

Per (method, strategy), over the seeds present (every number says its seed count; means with a
95 % t interval), on the unseen-phrasing split unless said:

    R[i][j]     accuracy on task j after the i-th task was learned (the accuracy matrix)
    ACC         mean over the five tasks of the final accuracy
    BWT         mean over tasks 1-4 of (final - just learned)
    forgetting  mean over tasks 1-4 of (best since learned - final) (Chaudhry et al.)
    lost        per earlier task, records right just after it was learned and wrong at the end
    gap         final accuracy on the in-template split minus the unseen split (what memorised
                phrasing adds)

joint (the five mixed from the init) is the upper bound: its accuracy per task. Costs per task:
seconds to train, parameters the version trained, bytes it added (its files).

    python benchmarks/sequence_report.py [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sequence_study import RESULTS, TASKS  # noqa: E402
from study_stats import fmt_ci  # noqa: E402


def acc(step: dict, task: str, split: str = "") -> float | None:
    scored = step["scores"]["tasks"].get(task + split)
    return None if scored is None else scored["acc"]


def right(step: dict, task: str) -> set[str]:
    return {rid for rid, ok, *_ in step["scores"]["tasks"][task]["records"] if ok}


def matrix(cell: dict) -> list[list[float | None]]:
    return [[acc(step, t) for t in TASKS] for step in cell["steps"]]


def measures(cell: dict) -> dict:
    """ACC, BWT, forgetting, records lost per earlier task, and the template gap of one cell."""
    r, steps = matrix(cell), cell["steps"]
    final = r[-1]
    earlier = range(len(TASKS) - 1)
    out = {
        "ACC": statistics.mean(final),
        "BWT": statistics.mean(final[j] - r[j][j] for j in earlier),
        "forgetting": statistics.mean(
            max(r[i][j] for i in range(j, len(r))) - final[j] for j in earlier
        ),
        "template gap": statistics.mean(
            acc(steps[-1], t, "-template") - acc(steps[-1], t) for t in TASKS
        ),
    }
    for j in earlier:
        task = TASKS[j]
        n = steps[-1]["scores"]["tasks"][task]["n"]
        out[f"lost {task}"] = len(right(steps[j], task) - right(steps[-1], task)) / n
    return out


def report(results: dict) -> str:
    cells = results["cells"].values()
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["method"], cell["strategy"]), []).append(cell)
    lines = ["## Per strategy (unseen phrasing; mean [95 % interval] over seeds)", ""]
    head = ["method", "strategy", "seeds", "ACC", "BWT", "forgetting", "template gap",
            *(f"lost {t}" for t in TASKS[:-1])]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, strategy), group in sorted(groups.items()):
        seeds = ",".join(str(c["seed"]) for c in sorted(group, key=lambda c: c["seed"]))
        if strategy == "joint":
            final = [statistics.mean(acc(c["steps"][0], t) for t in TASKS) for c in group]
            lines.append(
                f"| {method} | joint | {seeds} | {fmt_ci(final)} |" + " |" * (len(head) - 4)
            )
            continue
        m = [measures(c) for c in group]
        row = [method, strategy, seeds] + [fmt_ci([x[k] for x in m]) for k in head[3:]]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Accuracy matrix R[i][j] (seed mean; row: after task i)", ""]
    for (method, strategy), group in sorted(groups.items()):
        if strategy == "joint":
            continue
        lines += [f"{method}, {strategy} ({len(group)} seed(s))", "",
                  "| after | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]  # fmt: skip
        mats = [matrix(c) for c in group]
        for i, task in enumerate(TASKS):
            row = [[m[i][j] for m in mats] for j in range(len(TASKS))]
            shown = ["" if None in v else f"{statistics.mean(v):.3f}" for v in row]
            lines.append(f"| {task} | " + " | ".join(shown) + " |")
        lines.append("")
    lines += ["## Costs per task (seed mean)", "",
              "| method | strategy | task | train s | trained parameters | bytes added | eval records/s |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (method, strategy), group in sorted(groups.items()):
        for i, step in enumerate(group[0]["steps"]):
            per = [c["steps"][i] for c in group]
            secs = [s.get("seconds") for s in per if s.get("seconds") is not None]
            size = statistics.mean(sum(s["costs"]["bytes"].values()) for s in per)
            trained = per[0]["costs"]["trained_in_version"]
            rate = statistics.mean(s["scores"]["records_per_s"] for s in per)
            shown = f"{statistics.mean(secs):.0f}" if secs else "(shared)"
            lines.append(f"| {method} | {strategy} | {step['task']} | {shown} | {trained} | "
                         f"{size / 1e6:.1f} MB | {rate:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(report(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()

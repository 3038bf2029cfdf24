"""Compare a rerun of forgetting-study cells with the cells it repeats.

Both files are `forgetting_study.py` results. For every cell of the rerun (method, seed,
strategy, pair) that the reference file also holds, from the same A version (its digest), it
prints each scored task's accuracy in both, how many records are answered differently, and the
largest change of a record's p(reference). Cells on another A version are listed, not compared.

    python benchmarks/rerun_compare.py benchmarks/results/continual-strategies.json RERUN.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def compare(reference: dict, rerun: dict) -> tuple[list[str], int, int]:
    """(table lines, records answered differently, records compared)."""
    cells = {(r["method"], r["seed"], r["strategy"]): r for r in reference["runs"]}
    lines = ["| cell | accuracy, reference -> rerun | answered differently | largest change of p |",
             "|---|---|---|---|"]  # fmt: skip
    differ = total = 0
    for run in rerun["runs"]:
        key = (run["method"], run["seed"], run["strategy"])
        name = f"{key[0]} seed {key[1]} {key[2]}"
        old = cells.get(key)
        if old is None or (old.get("A") or {}).get("digest") != run["A"]["digest"]:
            lines.append(f"| {name} | not in the reference from this A version | | |")
            continue
        for pair, new_pair in run["pairs"].items():
            if pair not in old["pairs"]:
                continue
            before, after = old["pairs"][pair]["scores"], new_pair["scores"]
            accs, changed, largest, n = [], 0, 0.0, 0
            for task, scores in after.items():
                then = {rid: (right, p) for rid, right, p in before[task]["records"]}
                for rid, right, p in scores["records"]:
                    n += 1
                    changed += right != then[rid][0]
                    largest = max(largest, abs(p - then[rid][1]))
                accs.append(f"{task} {before[task]['acc']:.3f} -> {scores['acc']:.3f}")
            differ, total = differ + changed, total + n
            lines.append(
                f"| {name} {pair} | {'; '.join(accs)} | {changed} of {n} | {largest:.1e} |"
            )
    return lines, differ, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("rerun", type=Path)
    args = parser.parse_args(argv)
    lines, differ, total = compare(json.loads(args.reference.read_text()),
                                   json.loads(args.rerun.read_text()))  # fmt: skip
    print("\n".join(lines))
    print(f"\n{differ} of {total} scored records answered differently.")


if __name__ == "__main__":
    main()

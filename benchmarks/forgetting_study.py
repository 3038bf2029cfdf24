"""Forgetting study: how much of task A does each method keep when task B contradicts it, and
what does a continual strategy change?

Tasks (built in, see medqwen_cli/data/synthetic/rules.py): A = cxr-rules (chest X-ray reading
rules); the conflict pair trains B = derm-rules next (the same questions and labels answered by
other rules: every side question and a third of the size questions flip), the control pair
trains C = ct-rules next (the same rules as A in another modality's words: nothing flips).

Per (method, seed), with the same seeds for every method (paired):

    init-experts on the base
    continue A                              -> score A, B, C       A after A (the A version)
    conflict: continue B --watch A --eval-every N   -> curve of A, then score A, B
    control:  continue C --watch A --eval-every N   (from the same A version) -> score A, C

Every score is likelihood scoring over the labels on the first `--samples` eval records per
task (accuracy, and answer NLL = mean -log p(reference | labels)); every record's p(reference)
is kept in the results file, so the report counts A's records gained (wrong after A, right
after B) and lost (right after A, wrong after B) per cell. The base's zero-shot scores are
computed once (same model, same records). A job is one (method, seed, strategy, pair) cell, run
in the order the strategies are given. Results are appended to OUT/results.json as each cell
finishes (an interrupted study resumes; an unfinished cell's scratch bundles are removed and
redone); `--workers` jobs run at once, each in its own process with one thread.

One A version per (method, seed): the cells of a (method, seed) share the A version of its job
folder (the first to need it trains it, the others wait on a lock). The results file names each
(method, seed)'s A version by a digest of its loss and scores (`a_versions`, set by the first
cell that finishes); a cell continues only from that version. On another machine, with no job
folder, A is retrained and must reproduce the digest bit for bit, or the job stops and says to
copy the A folder over. Every cell records the CPU of its A and of its B phase (`env`).

Every run records what it ran on (`env`: the base's fingerprint, the CPU model, torch, threads).
A run counts as done only on the same base fingerprint, and the tables pair only runs made on
the base the zero-shot row was scored on: `--report-only` says how many runs it left out and why
(a preset built another way is another model; see docs/forgetting-study.md, reproducibility).

Then the tables: per configuration mean and 95% interval over seeds (A after A, A after B and
B after B absolute, records of A lost and gained, the ratio A after B / A after A); paired
differences on the same seeds and the same A versions (sslora - lora, each strategy - none,
each strategy - joint) with a t interval and an exact sign-flip test; per cell, where it ran
and A's records gained and lost; the targets (records of A lost, not the ratio, which gains
lift above 1); the forgetting curves (mean over seeds) as a PNG.

    python benchmarks/forgetting_study.py --seeds 0 1 2 3 4 5 --pairs conflict
    python benchmarks/forgetting_study.py --seeds 0 1 2 3 4 5 --pairs control
    python benchmarks/forgetting_study.py --report-only --plot docs/img/forgetting-curves.png
    python benchmarks/forgetting_study.py --quick --out /tmp/fs-quick    # tiny preset, minutes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_plots import plot_curves, plot_tradeoff  # noqa: E402
from study_report import comparable, reference_of, report  # noqa: E402
from study_run import (  # noqa: E402
    StudyError,
    base_scores,
    cell_settings,
    die_with_parent,
    fingerprint_of,
    label_of,
    recipe_for,
    run_job,
    strategy_overrides,
)
from study_stats import METHODS, PAIRS, a_digest  # noqa: E402


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="nano-qwen2-vl")
    parser.add_argument(
        "--methods", nargs="+", default=["lora", "moelora", "sslora"], choices=METHODS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument(
        "--pairs", nargs="*", default=["conflict"], choices=list(PAIRS),
        help="second tasks to run (none: only train and score A)",
    )  # fmt: skip
    parser.add_argument(
        "--strategies", nargs="+", default=["none"], metavar="STRATEGY",
        help="B-phase strategies, each from the same A version: none, replay:F (continual.replay "
        "F), replay:F:N (with a buffer of N records of A), protect:E (protected branches at "
        "energy E; A's basis computed from A's data at the start of B), joint (no B phase: A "
        "and B mixed from the init for twice the steps, the upper bound)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per task")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=100, help="eval records per task")
    parser.add_argument("--eval-every", type=int, default=10, help="curve: score A every N steps")
    parser.add_argument("--workers", type=int, default=2, help="jobs at once (1 thread each)")
    parser.add_argument("--out", type=Path, default=Path("out/forgetting-study"))
    parser.add_argument("--results", type=Path, default=None, help="default: OUT/results.json")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="recipe override for every run, e.g. adapter.rho=1 (repeatable; labels the rows)",
    )  # fmt: skip
    parser.add_argument("--plot", type=Path, default=None, help="draw the curves to this PNG")
    parser.add_argument(
        "--tradeoff", type=Path, default=None,
        help="draw retention (records of A lost) against plasticity (B after B) to this PNG",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="print the tables, run nothing")
    parser.add_argument("--quick", action="store_true", help="tiny-qwen2-vl, 1 seed, 4 steps")
    args = parser.parse_args(argv)
    for strategy in args.strategies:
        try:
            strategy_overrides(strategy)
        except ValueError as exc:
            parser.error(str(exc))
    if args.quick:
        args.base, args.seeds, args.steps, args.samples = "tiny-qwen2-vl", [0], 4, 8
        args.lr, args.eval_every, args.methods = 1e-3, 2, ["lora", "sslora"]
    return args


def run_study(args: argparse.Namespace, results: dict, results_file: Path) -> None:
    """Run every cell not yet in `results` (written to `results_file` as each finishes)."""
    settings = cell_settings(args)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the workers inherit it: one thread
        os.environ[name] = "1"
    from medqwen_cli.modeling import resolve_base

    fingerprint = resolve_base(args.base).fingerprint  # builds a preset once, here
    wanted = {"base": args.base, "samples": args.samples, "fingerprint": fingerprint}
    if results.get("base_settings") != wanted:
        if any(fingerprint_of(r) != fingerprint for r in results["runs"]):
            sys.exit(
                f"{results_file} holds runs on another base build than {args.base} "
                f"{fingerprint}: start a new results file (--results) so runs pair like with like"
            )
        results["base"] = base_scores(args, args.out)
        results["base_settings"] = wanted
        _write(results_file, results)
    versions = results.setdefault("a_versions", [])

    def find(method: str, seed: int, strategy: str = "none") -> dict | None:
        """The finished run of this cell continued from the (method, seed)'s reference A."""
        reference = reference_of(results, label_of(method, args.sets), seed)
        return next(
            (r for r in results["runs"]
             if r["label"] == label_of(method, args.sets, strategy) and r["seed"] == seed
             and r["settings"] == settings and fingerprint_of(r) == fingerprint
             and (reference is None or a_digest(r) == reference["digest"])),
            None,
        )  # fmt: skip

    def job(method: str, seed: int, cells: list) -> dict:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", label_of(method, args.sets))
        return {
            "method": method, "seed": seed, "cells": cells,
            "dir": str(args.out / f"{args.base}-{slug}-seed{seed}"),
            "recipe": recipe_for(args, method, seed, args.sets), "eval_every": args.eval_every,
            "expect_a": reference_of(results, label_of(method, args.sets), seed),
        }  # fmt: skip

    jobs = [  # one per cell, in the order of the strategies given (the first run first)
        job(method, seed, [(strategy, pair)])
        for strategy, pair, seed, method in itertools.product(
            args.strategies, args.pairs, args.seeds, args.methods
        )
        if pair not in (find(method, seed, strategy) or {"pairs": {}})["pairs"]
    ]  # fmt: skip
    if not args.pairs:  # A only
        jobs = [
            job(method, seed, [])
            for seed, method in itertools.product(args.seeds, args.methods)
            if find(method, seed) is None
        ]
    with ProcessPoolExecutor(
        args.workers, mp_context=get_context("spawn"), initializer=die_with_parent
    ) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                run = future.result()
            except StudyError as exc:  # the finished cells are written; stop the others now
                print(f"error: {exc}", file=sys.stderr, flush=True)
                os._exit(1)  # the workers end with this process (die_with_parent)
            label = label_of(job["method"], args.sets)
            if reference_of(results, label, job["seed"]) is None:  # the first A is the reference
                versions.append({"label": label, "seed": job["seed"], **run["A"]})
            cells = run.pop("cells") or {"none": {}}
            for strategy, pairs in cells.items():
                done = find(job["method"], job["seed"], strategy)
                if done is None:
                    results["runs"].append({
                        "method": job["method"], "strategy": strategy,
                        "label": label_of(job["method"], args.sets, strategy),
                        "seed": job["seed"], "settings": settings, **run, "pairs": pairs,
                    })  # fmt: skip
                else:
                    done["pairs"].update(pairs)
            _write(results_file, results)
            print(f"{job['method']} seed {job['seed']} {job['cells']}: {run['seconds']} s",
                  file=sys.stderr, flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results_file = args.results or args.out / "results.json"
    args.out.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": []}
    if not args.report_only:
        run_study(args, results, results_file)
    settings = cell_settings(args)
    print(report(results, settings))
    print(f"settings: {settings}")
    runs, _ = comparable(results, settings)
    if args.plot:
        plot_curves(runs, results.get("base"), args.plot)
    if args.tradeoff:
        plot_tradeoff(runs, args.tradeoff)


if __name__ == "__main__":
    main()

"""Forgetting study: lora, pissa, moelora and sslora through one built-in task sequence.

For every (method, seed): `init-experts` on the base, the base scored zero-shot (once per seed and
shared by the methods: it is the same model on the same records), then `continue` through the
sequence (radiograph -> CT -> pathology by default), each version scored on every task. Methods
are matched on total rank (r = 16: lora/pissa one rank-16 adapter, moelora/sslora 4 experts of
rank 4 plus routers). Reports ACC, BWT, average forgetting and per-task drop (absolute and
relative) with mean and spread over seeds, and the paper's 2-task protocol (train A, train B,
re-test A) read off the first two tasks. Results are appended to a JSON file as each run ends, so
an interrupted study still reports what it finished.

    python benchmarks/forgetting_study.py --base nano-qwen2-vl --seeds 0 1 2 --steps 40
    python benchmarks/forgetting_study.py --quick          # tiny-qwen2-vl, 1 seed, a few steps
    python benchmarks/forgetting_study.py --methods sslora --set adapter.rho=1   # a variant

A variant (`--set KEY=VALUE`, any recipe field) is its own row, labelled with its settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import yaml

METHODS = ("lora", "pissa", "moelora", "sslora")
TASKS = ("xray", "ct", "pathology")


def recipe_for(
    base: str, method: str, seed: int, steps: int, lr: float, samples: int, batch: int,
    sets: list[str] = (),
) -> dict:  # fmt: skip
    recipe = {
        "model": {"base": base, "dtype": "float32", "device": "cpu"},
        "adapter": {"method": method, "experts": 4, "top_k": 2, "rank": 16, "alpha": 32.0, "seed": seed},
        "tasks": {t: {"datasets": [{"path": f"builtin:{t}"}]} for t in TASKS},
        "train": {
            "lr": lr, "max_steps": steps, "batch_size": batch, "seed": seed, "warmup_ratio": 0.1,
            "checkpoint_every": 1000, "log_every": max(1, steps // 5),
            "max_image_pixels": 112 * 112, "max_length": 512,
        },
        "eval": {"batch_size": 8, "max_new_tokens": 32, "max_samples": samples, "tasks": list(TASKS)},
    }  # fmt: skip
    for item in sets:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)  # typed like a recipe value: 1 -> int, 0.5 -> float
    return recipe


def label_of(method: str, sets: list[str]) -> str:
    return " ".join([method, *sets])


def run_one(out: Path, recipe: dict, base_records: list[dict] | None) -> dict:
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.evaluation.api import evaluate_bundle
    from medqwen_cli.forgetting import forgetting_report
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe
    from medqwen_cli.training.run import continue_bundle

    start = time.perf_counter()
    summary = init_experts(build_recipe(recipe, check_paths=False), out)
    bundle = Bundle.open(out)
    if base_records is None:
        base_records = evaluate_bundle(bundle, base_only=True, tasks=list(TASKS)).records
    else:  # the same base on the same records: reuse the scores (stated in the report)
        bundle.append_evals([{k: v for k, v in r.items() if k != "time"} for r in base_records])
    losses = []
    for task in TASKS:
        result = continue_bundle(out, task=task)
        losses.append(result.final_loss)
    bundle = Bundle.open(out)
    lineage = [(e.id, e.tasks) for e in bundle.lineage() if e.tasks]
    report = forgetting_report(bundle.read_evals(), lineage, name=out.name, metric="headline_mean")
    return {
        "trainable_params": summary.trainable_params,
        "final_losses": losses,
        "matrix": report.matrix.model_dump(mode="json"),
        "acc": report.acc.value,
        "bwt": report.bwt.value,
        "fwt": report.fwt.value,
        "forgetting": report.forgetting.value,
        "per_task": [t.model_dump(mode="json") for t in report.per_task],
        "seconds": round(time.perf_counter() - start, 1),
        "base_records": base_records,
    }


def summarise(results: list[dict]) -> str:
    def stat(values: list[float | None]) -> str:
        vals = [v for v in values if v is not None]
        if not vals:
            return "n/a"
        if len(vals) == 1:
            return f"{vals[0]:+.3f}" if vals[0] < 0 else f"{vals[0]:.3f}"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"

    lines = [
        "| method | runs | trainable params | ACC | BWT | forgetting | 2-task: A after A | A after B | rel. drop of A |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = list(dict.fromkeys(r.get("label", r["method"]) for r in results))
    for label in labels:
        rows = [r for r in results if r.get("label", r["method"]) == label]
        a_after_a = [r["matrix"]["values"][1][0] for r in rows]
        a_after_b = [r["matrix"]["values"][2][0] for r in rows]
        rel = [
            (x - y) / x if x and y is not None else None
            for x, y in zip(a_after_a, a_after_b, strict=True)
        ]
        lines.append(
            f"| {label} | {len(rows)} | {rows[0]['trainable_params']:,} | {stat([r['acc'] for r in rows])} "
            f"| {stat([r['bwt'] for r in rows])} | {stat([r['forgetting'] for r in rows])} "
            f"| {stat(a_after_a)} | {stat(a_after_b)} | {stat(rel)} |"
        )
    # per task (every task but the last, which has nothing to forget yet): drop from right after
    # its training to the end of the sequence, absolute and relative
    tasks = [t["task"] for t in results[0]["per_task"]][:-1] if results else []
    lines += [
        "",
        "| method | " + " | ".join(f"{t}: drop | {t}: rel. drop" for t in tasks) + " |",
        "|---|" + "---|---|" * len(tasks),
    ]
    for label in labels:
        rows = [r for r in results if r.get("label", r["method"]) == label]
        cells = []
        for i in range(len(tasks)):
            for key in ("drop", "relative_drop"):
                cells.append(stat([r["per_task"][i][key]["value"] for r in rows]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="nano-qwen2-vl")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per task")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16, help="eval samples per task")
    parser.add_argument("--out", type=Path, default=Path("out/forgetting-study"))
    parser.add_argument(
        "--results", type=Path, default=None, help="JSON results file (default: OUT/results.json)"
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="recipe override for every run, e.g. adapter.rho=1 (repeatable; labels the rows)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="tiny-qwen2-vl, seed 0, 4 steps, 6 samples"
    )
    args = parser.parse_args()
    if args.quick:
        args.base, args.seeds, args.steps, args.samples, args.lr = "tiny-qwen2-vl", [0], 4, 6, 0.01
    results_file = args.results or args.out / "results.json"
    args.out.mkdir(parents=True, exist_ok=True)
    done = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": []}
    done["machine"] = (
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    done.pop("settings", None)  # each run records its own settings
    cell = {k: getattr(args, k) for k in ("base", "steps", "lr", "batch", "samples")}
    for seed in args.seeds:
        base_records = next(  # the base's scores do not depend on the method or its settings
            (
                r["base_records"]
                for r in done["runs"]
                if r["seed"] == seed and all(r.get(k, v) == v for k, v in cell.items())
            ),
            None,
        )
        for method in args.methods:
            label = label_of(method, args.sets)
            if any(
                r.get("label", r["method"]) == label
                and r["seed"] == seed
                and all(r.get(k, v) == v for k, v in cell.items())
                for r in done["runs"]
            ):
                continue  # finished in an earlier (interrupted) invocation
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", label)
            out = args.out / f"{args.base}-{slug}-seed{seed}"
            if out.exists():
                raise SystemExit(
                    f"{out} exists from an unfinished run: remove it to rerun that cell"
                )
            recipe = recipe_for(
                args.base, method, seed, args.steps, args.lr, args.samples, args.batch, args.sets
            )
            run = run_one(out, recipe, base_records)
            base_records = run["base_records"]
            done["runs"].append({"method": method, "label": label, "seed": seed, **cell, **run})
            results_file.write_text(json.dumps(done, indent=1))
            print(
                f"{label} seed {seed}: ACC {run['acc']} BWT {run['bwt']} ({run['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    print(summarise([r for r in done["runs"] if r["base"] == args.base]))
    print(f"machine: {done['machine']}; per run: {args.steps} steps per task, lr {args.lr}, "
          f"batch {args.batch}, {args.samples} eval records per task")  # fmt: skip


if __name__ == "__main__":
    main()

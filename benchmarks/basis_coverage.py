"""How much of a task's layer inputs its own protect basis covers, on the texts it was made from
and on texts it never saw.

A task's basis is made from a sample of its train records (`continual.protect_records`), so it
holds `protect_energy` of those records' layer-input energy. The old task's outputs are guarded
only as far as its later inputs lie inside the basis. This measures, on the version that recorded
the task's basis (its inputs as they were then), the share of the input energy inside that
basis, per layer input, for: the sample itself, other train records, the in-template eval split
and the unseen-phrasing eval split (`docs/sequence.md`). Results go to --results.

    python benchmarks/basis_coverage.py --cell out/sequence-study/lora-seed0/protect \\
        --version v0002 --task seq-cxr
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_run import run_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/basis-coverage.json"
RECIPE = ROOT / "recipes/sequence/nano.yaml"


def coverage(cell: Path, version: str, task: str, records: int) -> dict:
    """Per split: median, 10th percentile and min over layer inputs of the energy inside the
    task's basis (every column of it and of the tasks before it), and the per-group values."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.continual.bases import load_bases
    from medqwen_cli.continual.record import read_record
    from medqwen_cli.continual.subspace import energy_in, input_grams
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.evaluation.task_records import load_eval_tasks
    from medqwen_cli.loading import load_adapted
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.settings import Settings

    bundle = Bundle.open(cell / "bundle")
    recipe = load_recipe(RECIPE)
    data_dir = Settings.from_env().data_cache_dir
    bases, _ = load_bases(bundle, version)
    index = bases.tasks.index(task)
    guard = {g: c[:, [i for i, o in enumerate(bases.owner[g]) if o <= index]]
             for g, c in bases.columns.items()}  # fmt: skip
    sampled = set(read_record(bundle, version).tasks[task].get("ids", []))
    train = [r for spec in recipe.task_datasets(task)
             for r in load_records(spec, spec.split, cache_dir=data_dir,
                                   max_image_pixels=recipe.train.max_image_pixels)]  # fmt: skip
    evals = load_eval_tasks(recipe, [task, f"{task}-template"], data_dir=data_dir)
    splits = {
        "train sample (the basis's own)": [r for r in train if r.id in sampled],
        "other train records": [r for r in train if r.id not in sampled][:records],
        "eval, in-template": evals[f"{task}-template"].records[:records],
        "eval, unseen phrasing": evals[task].records[:records],
    }
    adapted = load_adapted(bundle, version)
    collate = Collator(adapted.processor, max_image_pixels=recipe.train.max_image_pixels,
                       max_length=recipe.train.max_length)  # fmt: skip
    size = recipe.train.batch_size
    out = {}
    for name, chosen in splits.items():
        grams, _, _ = input_grams(
            adapted.model,
            lambda chosen=chosen: (
                collate(chosen[i : i + size]) for i in range(0, len(chosen), size)
            ),
            "cpu",
        )
        inside = {g: round(energy_in(guard[g], c), 6) for g, c in grams.items()}
        values = sorted(inside.values())
        out[name] = {"records": len(chosen), "median": statistics.median(values),
                     "p10": values[len(values) // 10], "min": values[0], "groups": inside}  # fmt: skip
        print(f"{name}: {len(chosen)} records, energy inside the basis: median "
              f"{out[name]['median']:.3f}, 10th percentile {out[name]['p10']:.3f}, "
              f"min {values[0]:.3f}", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cell", type=Path, required=True, help="a protect cell of the study")
    parser.add_argument("--version", required=True, help="the version that recorded the basis")
    parser.add_argument("--task", required=True)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = json.loads(args.results.read_text()) if args.results.exists() else {"cells": {}}
    key = f"{args.cell.parent.name}/{args.cell.name}/{args.version}/{args.task}"
    splits = coverage(args.cell, args.version, args.task, args.records)
    from medqwen_cli.bundle import Bundle

    base = Bundle.open(args.cell / "bundle").manifest.base.get("fingerprint")
    results["cells"][key] = {"splits": splits, "env": run_env(base)}
    args.results.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

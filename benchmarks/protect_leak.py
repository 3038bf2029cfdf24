"""Where protect leaks: how much the branches trained after a task add to each layer's output on
that task's records, by kind of layer and by position, against what the task's adapters add.

On a protected bundle's version (every branch kept apart, as stored), each adapted layer's output
on the task's records is split into the base's, the first task's adapters (the layer's own
experts), the task's own branch (none for the first task) and the branches trained after it.
The guarantee keeps the later branches at zero on inputs inside the bases; what they add is
what the bases do not guard (the energy the cut leaves out, inputs no basis was computed from,
and, from the second layer on, inputs that earlier layers' leaks already moved). Printed per
kind of layer (q/k/v/o/gate/up/down_proj) and position (the positions that predict the answer's
tokens, and the rest): the relative norm ||part|| / ||output|| summed over tokens and layers.
Results go to --results.

    python benchmarks/protect_leak.py --cell out/sequence-study/lora-seed0/protect \\
        --version v0006 --task seq-ct --split eval-template
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_run import run_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/protect-leak.json"
RECIPE = ROOT / "recipes/sequence/nano.yaml"
PARTS = ("first task", "own branch", "later branches")


def leak(cell: Path, version: str, task: str, split: str, records: int) -> dict:
    """{kind: {position: {part: relative norm}}} over `records` records of `task`'s `split`."""
    import torch

    from medqwen_cli.adapters.inject import adapter_layers
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.continual.record import read_record
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.evaluation.task_records import load_eval_tasks
    from medqwen_cli.loading import load_adapted
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.settings import Settings

    bundle = Bundle.open(cell / "bundle")
    record = read_record(bundle, version)
    tasks = record.bases.tasks  # in training order; each after the first trained a branch
    trained_in = {t: v for v, idx in {**record.bases.files, version: record.bases.added}.items()
                  for t in (tasks[i] for i in idx)}  # fmt: skip
    skips = {t: [re.compile(p) for p in read_record(bundle, trained_in[t]).protect_exclude]
             for t in tasks[1:]}  # fmt: skip

    def branch_tasks(layer_name: str) -> list[str]:
        """The tasks whose branches this layer holds, in order (a run's exclude left it none)."""
        return [t for t in tasks[1:] if not any(p.search(layer_name) for p in skips[t])]

    recipe = load_recipe(RECIPE)
    name = task if split == "eval" else f"{task}-template"
    chosen = load_eval_tasks(recipe, [name], data_dir=Settings.from_env().data_cache_dir)
    chosen = chosen[name].records[:records]
    adapted = load_adapted(bundle, version)
    collate = Collator(adapted.processor, max_image_pixels=recipe.train.max_image_pixels,
                       max_length=recipe.train.max_length)  # fmt: skip
    sums: dict[tuple[str, str, str], list[float]] = {}
    answer = {}

    def hook(layer_name: str):
        kind = layer_name.rsplit(".", 1)[-1]

        held = branch_tasks(layer_name)
        own = held.index(task) if task in held else -1  # its branch (-1: none here)
        after = tasks.index(task)  # the branches of tasks trained after it
        later_ix = [i for i, t in enumerate(held) if tasks.index(t) > after]

        def capture(layer, args, out) -> None:
            x = args[0].float().reshape(-1, layer.in_features)
            y = out.float().reshape(-1, layer.out_features)
            later = later_ix
            for part, sets in zip(PARTS, ([layer], [layer.branches[own]] if own >= 0 else [],
                                          [layer.branches[i] for i in later]), strict=True):  # fmt: skip
                delta = torch.zeros_like(y)
                for s in sets:
                    codes, b = s._codes(x)
                    delta += codes @ b.t()
                for where, mask in (("answer", answer["mask"]), ("other", ~answer["mask"])):
                    total = sums.setdefault((kind, where, part), [0.0, 0.0])
                    total[0] += float(delta[mask].pow(2).sum())
                    total[1] += float(y[mask].pow(2).sum())

        return capture

    handles = [m.register_forward_hook(hook(n)) for n, m in adapter_layers(adapted.model)]
    with torch.no_grad():
        for start in range(0, len(chosen), 8):
            batch = collate(chosen[start : start + 8])
            labels = batch.pop("labels")
            mask = torch.zeros_like(labels, dtype=torch.bool)
            mask[:, :-1] = labels[:, 1:] != -100  # the position predicting an answer token
            answer["mask"] = mask.reshape(-1)
            adapted.model(**batch)
    for handle in handles:
        handle.remove()
    out: dict = {}
    for (kind, where, part), (num, den) in sorted(sums.items()):
        out.setdefault(kind, {}).setdefault(where, {})[part] = round((num / den) ** 0.5, 6)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cell", type=Path, required=True, help="a protect cell of the study")
    parser.add_argument("--version", required=True, help="a protected version (e.g. the last)")
    parser.add_argument("--task", required=True, help="an earlier task of that version")
    parser.add_argument("--split", choices=["eval", "eval-template"], default="eval-template")
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    from medqwen_cli.bundle import Bundle

    torch.set_num_threads(1)
    parts = leak(args.cell, args.version, args.task, args.split, args.records)
    print(f"| layer | position | {' | '.join(PARTS)} | later / first |")
    print("|---|---|---|---|---|---|")
    for kind, places in parts.items():
        for where, p in places.items():
            ratio = p["later branches"] / p["first task"] if p["first task"] else float("nan")
            print(f"| {kind} | {where} | " + " | ".join(f"{p.get(x, 0):.4f}" for x in PARTS)
                  + f" | {ratio:.2f} |")  # fmt: skip
    results = json.loads(args.results.read_text()) if args.results.exists() else {"cells": {}}
    key = f"{args.cell.parent.name}/{args.cell.name}/{args.version}/{args.task}/{args.split}"
    base = Bundle.open(args.cell / "bundle").manifest.base.get("fingerprint")
    results["cells"][key] = {"parts": parts, "records": args.records, "env": run_env(base)}
    args.results.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

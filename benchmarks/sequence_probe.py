"""Probe one step of a sequence cell with other settings: from the cell's version before TASK,
train TASK with the given `--set` items and score the tasks seen so far (unseen phrasing).

It answers "what if this task had been trained otherwise" without rerunning a cell: a scratch
copy of the cell's bundle keeps the versions up to the one before TASK (the cell itself is not
touched), and `continue` trains TASK on it. Each probe is appended to --results as it finishes
(a probe already there is skipped).

    python benchmarks/sequence_probe.py --cell out/sequence-study/lora-seed0/protect \\
        --task seq-derm --label protect:0.9 \\
        --set continual.protect=true --set continual.protect_energy=0.9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sequence_study import TASKS, save_cell  # noqa: E402
from study_run import _scores, run_env  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results/sequence-probes.json"


def scratch_copy(cell: Path, task: str, out: Path) -> Path:
    """A copy of `cell`'s bundle whose head is the version trained just before `task`."""
    from medqwen_cli.bundle import Bundle

    bundle = Bundle.open(cell / "bundle")
    ids = [v.id for v in bundle.manifest.versions]
    before = next(i for i, v in enumerate(bundle.manifest.versions) if task in (v.tasks or []))
    keep = ids[:before]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(cell / "bundle", out)
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["versions"], manifest["head"] = manifest["versions"][:before], keep[-1]
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1))
    for vid in ids[before:]:
        shutil.rmtree(out / "versions" / vid)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cell", type=Path, required=True, help="a cell folder of the study")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--label", required=True, help="the probe's name in the results")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("out/sequence-probes"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from medqwen_cli.training.run import continue_bundle

    key = f"{args.cell.parent.name}/{args.cell.name}/{args.task}/{args.label}"
    if args.results.is_file() and key in json.loads(args.results.read_text())["cells"]:
        print(f"{key}: done", file=sys.stderr)
        return
    work = args.out / key.replace("/", "_")
    root = scratch_copy(args.cell, args.task, work / "bundle")
    t0 = time.perf_counter()
    result = continue_bundle(root, task=args.task, overrides=args.sets, evaluate=False)
    seen = TASKS[: TASKS.index(args.task) + 1]
    scores = _scores(root, result.version, seen, work)
    probe = {
        "cell": str(args.cell), "task": args.task, "label": args.label, "sets": args.sets,
        "acc": {t: s["acc"] for t, s in scores.items()}, "continual": result.continual,
        "seconds": round(time.perf_counter() - t0, 1), "env": run_env(None),
    }  # fmt: skip
    save_cell(args.results, key, probe)
    print(f"{key}: {probe['acc']}", file=sys.stderr)


def probe_table(path: Path | None) -> list[str]:
    """sequence_probe.py's results: one task of a cell retrained otherwise, the seen tasks'
    accuracy after it, beside the cell's own row (a part of sequence_report.py's report)."""
    from sequence_report import table

    if path is None or not path.is_file():
        return []
    rows = []
    for key, probe in json.loads(path.read_text())["cells"].items():
        cell = key.rsplit("/", 2)[0]
        rows.append([cell, probe["task"], probe["label"],
                     *(f"{probe['acc'].get(t, float('nan')):.2f}" if t in probe["acc"] else ""
                       for t in TASKS)])  # fmt: skip
    return ["## Probes (one task retrained from the cell's version before it)", "",
            *table(["cell", "task", "trained with", *TASKS], rows), ""]  # fmt: skip


if __name__ == "__main__":
    main()

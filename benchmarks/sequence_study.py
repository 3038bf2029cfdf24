"""The clinical sequence study: five tasks learned in order, every seen task scored after each.

One cell is a (method, seed, strategy). The first task (seq-cxr) is trained once per (method,
seed), with `--protect` (with no earlier task it trains exactly as without, and records its own
input basis), under a lock, and every cell of that (method, seed) continues from it: the cell
records its adapter's sha256 and refuses a results file that pairs another. Then `continue`
through seq-ct, seq-derm, seq-mammo and seq-thyroid with the strategy; after each task, every
task seen so far and the next one are scored on their unseen-phrasing split (`seq-X`), per
record, and the task just learned (after the last task: every task) on its in-template split
(`seq-X-template`), see `schedule`. The first version is scored once per (method, seed). Protect cells check that no earlier task's
basis came from data (each is computed at the end of its own task's run: no old data read).
`protect:E` above the energy the shared first version recorded its basis at trains seq-cxr again
in the cell's own bundle, recording at E, and goes on only if the adapter is the shared one's bit
for bit (a later run can cut a stored basis lower, never higher).
`protect@steps=100` and `protect@lr=0.0006` train each later task for 100 steps, or at that
learning rate. `protect:E+replay:F:N` runs both in each `continue` (replay reads the old tasks' data; the
bases still come from the versions). `joint` (the upper bound) trains the five mixed from the init for five times the steps and is
scored once. Costs per task come from the runs: train seconds, trainable and frozen adapter
parameters, bytes the version added, evaluation records per second.

Results go to --results as each cell finishes (a cell already there is skipped: rerun the same
command to resume). A cell keeps its finished tasks in its folder (`progress.json`): run again
by the same code with the same settings, an interrupted cell goes on after the last of them
(the cell records `resumed`; a task whose version was written before the stop keeps its
training time, not its command's). The report is benchmarks/sequence_report.py.

    python benchmarks/sequence_study.py --methods lora sslora --seeds 0 1 2 \\
        --strategies none protect replay:0.1:50 joint
    python benchmarks/sequence_study.py --quick      # tiny preset, 2 steps: a smoke run
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_run import (  # noqa: E402
    _scores,
    adapter_sha256,
    code_version,
    run_env,
    strategy_overrides,
)

from medqwen_cli.data.synthetic.sequence import SEQUENCE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/sequence/nano.yaml"
TASKS = [t.removeprefix("builtin:") for t in SEQUENCE]  # the recipe's task names, in order
RESULTS = ROOT / "benchmarks/results/sequence-study.json"


# after `@`: name -> (recipe setting, value as --set writes it)
TRAINING = {
    "steps": ("train.max_steps", int),
    "lr": ("train.lr", float),
    "exclude": ("continual.protect_exclude", lambda v: f"[{v}]"),  # one regex: no branch there
}


def sets_of(strategy: str) -> list[str]:
    """`--set` items of a strategy: `protect` alone takes every default (energy 0.99, full
    layers fit); the others as the pair study names them (none, replay:F:N, protect:E); `+`
    joins a protect and a replay (`protect:0.97+replay:0.1:50`: both in one run); `@` sets the
    training of each task after the shared first one: `protect@steps=100`, `protect@lr=0.0006`,
    `protect@exclude=down_proj` (layers given no protected branch; comma-separated)."""
    strategy, at, changes = strategy.partition("@")
    if at:
        sets = sets_of(strategy)
        for change in changes.split(","):
            key, _, value = change.partition("=")
            if key not in TRAINING:
                raise ValueError(f"{strategy!r}: @{key}: one of {', '.join(TRAINING)}")
            name, kind = TRAINING[key]
            sets.append(f"{name}={kind(value)}")
        return sets
    parts = strategy.split("+")
    kinds = sorted(p.split(":")[0] for p in parts)
    if len(parts) > 1 and kinds != ["protect", "replay"]:
        raise ValueError(f"{strategy!r}: `+` joins one protect and one replay")
    return [s for p in parts
            for s in (["continual.protect=true"] if p == "protect" else strategy_overrides(p))]  # fmt: skip


def base_sets(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    sets = [f"adapter.method={method}", f"adapter.seed={seed}", f"train.seed={seed}",
            f"train.max_steps={args.steps}", f"eval.max_samples={args.samples}"]  # fmt: skip
    return sets + ([f"model.base={args.base}"] if args.base else [])


def scores(bundle, version: str, unseen: list[str], template: list[str], out: Path) -> dict:
    """Per task, accuracy and per-record results: `unseen` on their unseen-phrasing split,
    `template` on their in-template split (`-template`)."""
    names = [*unseen, *(f"{t}-template" for t in template)]
    t0 = time.perf_counter()
    result = _scores(bundle.root, version, names, out)
    seconds = time.perf_counter() - t0
    n = sum(v["n"] for v in result.values())
    return {"tasks": result, "seconds": round(seconds, 3), "records_per_s": round(n / seconds, 2)}


def schedule(i: int) -> tuple[list[str], list[str]]:
    """What is scored after the i-th task (0-based): every task seen so far and the next on the
    unseen split (the accuracy matrix, with forward transfer); the in-template split for the
    task just learned, and for every task after the last one (the memorised-phrasing gap, just
    learned and final). The template rows between would double the scoring and feed no measure."""
    last = i == len(TASKS) - 1
    return TASKS[: i + 2], TASKS if last else [TASKS[i]]


def version_costs(bundle, version: str) -> dict:
    """What a version added: bytes of its files, and its adapter's parameters."""
    from medqwen_cli.bundle import summarize

    vdir = bundle.version_dir(version)
    summary = summarize(bundle, version)
    return {
        "bytes": {p.name: p.stat().st_size for p in sorted(vdir.iterdir()) if p.is_file()},
        "adapter_parameters": summary.get("trainable_parameters"),
        "trained_in_version": summary.get("trained_in_version")
        or summary.get("trainable_parameters"),
    }


def first_task(args: argparse.Namespace, method: str, seed: int, out: Path) -> Path:
    """The (method, seed)'s bundle after seq-cxr, trained and scored once under a lock."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.training.run import continue_bundle

    folder = out / f"{method}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "after-first"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_dir():
            work = Path(tempfile.mkdtemp(dir=folder)) / "bundle"
            init_experts(load_recipe(RECIPE, base_sets(args, method, seed)), work)
            t0 = time.perf_counter()
            result = continue_bundle(work, task=TASKS[0], overrides=["continual.protect=true"],
                                     evaluate=False)  # fmt: skip
            timing = {"command_seconds": round(time.perf_counter() - t0, 3),
                      "train_seconds": result.seconds}  # fmt: skip
            (folder / "first-timing.json").write_text(json.dumps(timing))
            work.rename(done)
        scored = folder / "first-scores.json"  # one version: scored once for every cell
        if not scored.is_file():
            bundle = Bundle.open(done)
            first = scores(bundle, bundle.head, *schedule(0), Path(tempfile.mkdtemp(dir=folder)))
            tmp = scored.with_suffix(".tmp")
            tmp.write_text(json.dumps(first))
            os.replace(tmp, scored)
    return done


def richer_energy(strategy: str, first: Path) -> float | None:
    """The protect energy a cell asks for when it is above the one the shared first version
    recorded its basis at (a later run can cut a stored basis lower, never higher), else None."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.continual.record import read_record

    asked = [float(s.split("=", 1)[1]) for s in sets_of(strategy)
             if s.startswith("continual.protect_energy=")]  # fmt: skip
    bundle = Bundle.open(first)
    recorded = read_record(bundle, bundle.head).protect_energy
    return asked[0] if asked and asked[0] > recorded else None


def record_first_at(args: argparse.Namespace, method: str, seed: int, energy: float, root: Path,
                    shared_sha: str) -> None:  # fmt: skip
    """The first task trained again in the cell's own bundle, recording its basis at `energy`.
    Training does not depend on the energy (with no earlier task protect only records), so the
    adapter must be the shared first version's bit for bit: the cell then pairs with the others
    (same adapter, same scores) and only its stored basis holds more."""
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.training.run import continue_bundle

    init_experts(load_recipe(RECIPE, base_sets(args, method, seed)), root)
    result = continue_bundle(root, task=TASKS[0], evaluate=False, overrides=[
        "continual.protect=true", f"continual.protect_energy={energy}"])  # fmt: skip
    if adapter_sha256(root, result.version) != shared_sha:
        raise RuntimeError(f"{method} seed {seed}: seq-cxr trained again for a basis at {energy} "
                           "is not the shared first version (another machine or thread count?)")  # fmt: skip


def run_cell(args: argparse.Namespace, method: str, seed: int, strategy: str, out: Path) -> dict:
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.training.run import continue_bundle, train_bundle

    cell_dir = out / f"{method}-seed{seed}" / strategy.replace(":", "_")
    t_start = time.perf_counter()
    done = resume_point(cell_dir, args)
    if done is None:  # nothing to resume: the cell starts over
        shutil.rmtree(cell_dir, ignore_errors=True)
        cell_dir.mkdir(parents=True)
    steps: list[dict] = list(done["steps"]) if done else []
    if strategy == "joint":
        from medqwen_cli.init_experts import init_experts
        from medqwen_cli.recipe import load_recipe

        root = cell_dir / "bundle"
        init_experts(load_recipe(RECIPE, base_sets(args, method, seed)), root)
        result = train_bundle(
            root, tasks=TASKS, overrides=[f"train.max_steps={args.steps * len(TASKS)}"]
        )
        bundle = Bundle.open(root)
        steps.append({"task": "joint", "version": result.version, "seconds": result.seconds,
                      "loss": result.final_loss, "costs": version_costs(bundle, result.version),
                      "scores": scores(bundle, result.version, TASKS, TASKS, cell_dir)})  # fmt: skip
        return {"first": None, "steps": steps}
    first = first_task(args, method, seed, out)
    root = cell_dir / "bundle"
    first_sha = adapter_sha256(first, Bundle.open(first).head)
    if done and done["first"] != first_sha:
        raise RuntimeError(f"{cell_dir}: its first version is not the shared one; remove it")
    if not steps:
        energy = richer_energy(strategy, first)
        if energy is None:
            shutil.copytree(first, root)
        else:
            record_first_at(args, method, seed, energy, root, first_sha)
        bundle = Bundle.open(root)
        head = bundle.head
        timing = first.parent / "first-timing.json"  # the shared run's own times
        timing = json.loads(timing.read_text()) if timing.is_file() else {}
        first_scores = json.loads((first.parent / "first-scores.json").read_text())
        steps.append({"task": TASKS[0], "version": head, **timing,
                      "costs": version_costs(bundle, head), "scores": first_scores})  # fmt: skip
        save_progress(cell_dir, args, first_sha, steps, t_start, 0.0)
    for i, task in enumerate(TASKS[1:], start=1):
        if i < len(steps):
            continue  # finished before an interruption
        ran_before = trained(Bundle.open(root), task)  # its version written, then stopped
        t0 = time.perf_counter()
        result = continue_bundle(root, task=task, overrides=sets_of(strategy), evaluate=False)
        command_seconds = round(time.perf_counter() - t0, 3)  # loading, training, bases, writing
        if strategy.startswith("protect"):  # no old data: every earlier basis from a version
            earlier = {t: s for t, s in result.continual["bases_from"].items() if t != task}
            if any(s == "data" for s in earlier.values()):
                raise RuntimeError(f"{task}: an earlier basis was computed from data: {earlier}")
        bundle = Bundle.open(root)
        steps.append({
            "task": task, "version": result.version, "seconds": result.seconds,
            **({} if ran_before else {"command_seconds": command_seconds}),  # else not measured
            "loss": result.final_loss, "continual": result.continual, "notes": result.notes,
            "costs": version_costs(bundle, result.version),
            "scores": scores(bundle, result.version, *schedule(i), cell_dir),
        })  # fmt: skip
        save_progress(cell_dir, args, first_sha, steps, t_start, done["seconds"] if done else 0.0)
    cell = {"first": {"sha256": first_sha}, "steps": steps}
    if done:
        cell["resumed"] = {
            "after_task": done["steps"][-1]["task"],
            "earlier_seconds": done["seconds"],
        }
    return cell


PROGRESS = "progress.json"  # a cell's finished tasks, so that an interrupted cell resumes


def save_progress(cell_dir: Path, args: argparse.Namespace, first_sha: str, steps: list[dict],
                  t_start: float, earlier: float) -> None:  # fmt: skip
    """The tasks finished so far, with what must match for a later run to go on from them."""
    state = {"code": code_version(), "settings": cell_settings(args), "first": first_sha,
             "seconds": round(earlier + time.perf_counter() - t_start, 1), "steps": steps}  # fmt: skip
    tmp = cell_dir / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, cell_dir / PROGRESS)


def resume_point(cell_dir: Path, args: argparse.Namespace) -> dict | None:
    """The finished tasks of an interrupted run of this cell, when the same code and settings
    ran them and its bundle still holds their versions (else None: the cell starts over)."""
    from medqwen_cli.bundle import Bundle

    path = cell_dir / PROGRESS
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    if done["code"] != code_version() or done["settings"] != cell_settings(args):
        return None
    try:
        versions = {v.id for v in Bundle.open(cell_dir / "bundle").manifest.versions}
    except Exception:  # noqa: BLE001 - no readable bundle: nothing to go on from
        return None
    return done if {s["version"] for s in done["steps"]} <= versions else None


def trained(bundle, task: str) -> bool:
    """Whether the bundle's head version trained `task` (its run stopped after writing it)."""
    return any(v.id == bundle.head and task in v.tasks for v in bundle.manifest.versions)


def cell_settings(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "samples": args.samples, "base": args.base}


def fingerprint(args: argparse.Namespace) -> str | None:
    """The base's fingerprint, as the shared first version's bundle recorded it."""
    from medqwen_cli.bundle import Bundle

    folder = next(args.out.glob("*-seed*/after-first"), None)
    return Bundle.open(folder).manifest.base.get("fingerprint") if folder else None


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"cells": {}}


def save_cell(path: Path, key: str, cell: dict) -> None:
    """Add one finished cell to the results file, atomically, under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(path)
        results["cells"][key] = cell
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "sslora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--strategies", nargs="+", default=["none", "protect"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--base", default=None, help="another base than the recipe's (nano)")
    parser.add_argument("--out", type=Path, default=Path("out/sequence-study"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 steps, 8 records")
    args = parser.parse_args(argv)
    if args.quick:
        args.base, args.steps, args.samples = "tiny-qwen2-vl", 2, 8
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for method in args.methods:
        for seed in args.seeds:
            for strategy in args.strategies:
                key = f"{method}/{seed}/{strategy}"
                results = load_results(args.results)
                if key in results["cells"]:
                    print(f"{key}: done", file=sys.stderr)
                    continue
                t0 = time.perf_counter()
                cell = run_cell(args, method, seed, strategy, args.out)
                first = cell["first"]
                paired = [c for c in results["cells"].values() if c.get("method") == method
                          and c.get("seed") == seed and c.get("first")]  # fmt: skip
                if first and any(c["first"]["sha256"] != first["sha256"] for c in paired):
                    raise RuntimeError(f"{key}: its first version differs from the paired cells'")
                earlier = cell.get("resumed", {}).get("earlier_seconds", 0.0)
                cell.update(method=method, seed=seed, strategy=strategy,
                            settings=cell_settings(args), env=run_env(fingerprint(args)),
                            seconds=round(earlier + time.perf_counter() - t0, 1))  # fmt: skip
                save_cell(args.results, key, cell)
                print(f"{key}: {cell['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Forgetting study: does sslora forget task A less than lora / moelora / pissa when task B
contradicts it?

Tasks (built in, see medqwen_cli/data/synthetic/rules.py): A = cxr-rules (chest X-ray reading
rules); the conflict pair trains B = derm-rules next (the same questions and labels answered by
other rules: every side question and a third of the size questions flip), the control pair
trains C = ct-rules next (the same rules as A in another modality's words: nothing flips).

Per (method, seed), with the same seeds for every method (paired):

    init-experts on the base
    continue A                              -> score A, B, C       plasticity: A after A
    conflict: continue B --watch A --eval-every N   -> curve of A, then score A, B
    control:  continue C --watch A --eval-every N   (from the same A version) -> score A, C

Every score is likelihood scoring over the labels on the first `--samples` eval records per
task (accuracy, and answer NLL = mean -log p(reference | labels)); every record's p(reference)
is kept in the results file. The base's zero-shot scores are computed once (same model, same
records). A job is one (method, seed, strategy, pair) cell, run in the order the strategies
are given; the cells of a (method, seed) share its A version (the first to need it trains it,
the others wait on a lock). Results are appended to OUT/results.json as each cell finishes (an
interrupted study resumes; an unfinished cell's scratch bundles are removed and redone);
`--workers` jobs run at once, each in its own process with one thread (2 workers use both cores
of a 2-core machine).

Every run records what it ran on (`env`: the base's fingerprint, the CPU model, torch, threads).
A run counts as done only on the same base fingerprint, and the tables pair only runs made on
the base the zero-shot row was scored on: `--report-only` says how many runs it left out and why
(a preset built another way is another model; see docs/forgetting-study.md, reproducibility).

Then the tables: per method mean and 95% interval over seeds; paired differences between
methods on the same seed (sslora - lora, sslora - moelora, ...) with a t interval and an exact
sign-flip test; the forgetting curves (mean over seeds) as a PNG.

    python benchmarks/forgetting_study.py --seeds 0 1 2 3 4 5 --pairs conflict
    python benchmarks/forgetting_study.py --seeds 0 1 2 3 4 5 --pairs control
    python benchmarks/forgetting_study.py --report-only --plot docs/img/forgetting-curves.png
    python benchmarks/forgetting_study.py --quick --out /tmp/fs-quick    # tiny preset, minutes
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

METHODS = ("lora", "moelora", "sslora", "pissa")
TASK_A, TASK_B, TASK_C = "cxr-rules", "derm-rules", "ct-rules"
PAIRS = {"conflict": TASK_B, "control": TASK_C}
COMPARISONS = (("sslora", "lora"), ("sslora", "moelora"), ("sslora", "pissa"), ("moelora", "lora"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_env(fingerprint: str) -> dict:
    """What a run ran on: runs on different base builds are not pairs."""
    import torch

    return {"base_fingerprint": fingerprint, "cpu": cpu_model(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}  # fmt: skip


def fingerprint_of(run: dict) -> str | None:
    return (run.get("env") or {}).get("base_fingerprint")


# --------------------------------------------------------------------------- recipe


def recipe_for(args: argparse.Namespace, method: str, seed: int, sets: list[str] = ()) -> dict:
    """The recipe of one run: matched total rank (lora/pissa one rank-16 adapter, moelora and
    sslora 4 experts of rank 4, top-2), the recipe schema's defaults otherwise."""
    import yaml

    tasks = (TASK_A, TASK_B, TASK_C)
    recipe = {
        "model": {"base": args.base, "dtype": "float32", "device": "cpu"},
        "adapter": {"method": method, "experts": 4, "top_k": 2, "rank": 16, "seed": seed},
        "tasks": {t: {"datasets": [{"path": f"builtin:{t}"}]} for t in tasks},
        "train": {
            "lr": args.lr, "max_steps": args.steps, "batch_size": args.batch, "seed": seed,
            "warmup_ratio": 0.1, "checkpoint_every": 1000, "log_every": 10,
            "max_image_pixels": 56 * 56, "max_length": 256,
        },
        "eval": {"batch_size": 16, "max_samples": args.samples, "scoring": "likelihood"},
    }  # fmt: skip
    for item in sets:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)  # typed like a recipe value: 1 -> int, 0.5 -> float
    return recipe


def strategy_overrides(strategy: str) -> list[str]:
    """The `--set` items of a strategy of the B phase: `none`, `replay:F` / `replay:F:N`
    (continual.replay F, with a buffer of N records of A), or `protect:E` (protected branches at
    continual.protect_energy E; A's basis computed from its data before B, as --protect does).
    `joint` (the upper bound) is no B phase: A and B mixed from the init for twice the steps."""
    kind, *values = strategy.split(":")
    if kind in ("none", "joint") and not values:
        return []
    if kind == "replay" and 1 <= len(values) <= 2:
        sets = [f"continual.replay={float(values[0])}"]
        return sets + ([f"continual.replay_per_task={int(values[1])}"] if len(values) == 2 else [])
    if kind == "protect" and len(values) == 1:
        return ["continual.protect=true", f"continual.protect_energy={float(values[0])}"]
    raise ValueError(
        f"unknown strategy {strategy!r}: none, replay:F, replay:F:N, protect:E or joint"
    )


def strategy_order(strategy: str) -> tuple:
    """Sort key of the tables: none, replay by fraction, protect by energy, joint."""
    kind, *values = strategy.split(":")
    rank = ("none", "replay", "protect", "joint")
    return (rank.index(kind) if kind in rank else len(rank), *map(float, values))


def label_of(method: str, sets: list[str], strategy: str = "none") -> str:
    return " ".join([method, *sets, *([strategy] if strategy != "none" else [])])


def cell_settings(args: argparse.Namespace) -> dict:
    """What must match for a finished job to count for this invocation."""
    return {k: getattr(args, k) for k in ("base", "steps", "lr", "batch", "samples", "eval_every")}


# --------------------------------------------------------------------------- one job


def _scores(bundle, version: str, tasks: list[str], out: Path) -> dict:
    """Accuracy, answer NLL and per-record p(reference) of `version` on `tasks`."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    predictions = out / f"predictions-{version}.jsonl"
    result = evaluate_bundle(
        bundle, version=None if version == "base" else version, base_only=version == "base",
        tasks=tasks, save_predictions=predictions,
    )  # fmt: skip
    per_task: dict[str, dict] = {}
    for task in result.tasks:
        scores = task.by_type["vqa_closed"]
        per_task[task.task] = {
            "acc": scores["accuracy"], "nll": scores["answer_nll"], "n": task.n, "records": [],
        }  # fmt: skip
    for line in predictions.read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        p_ref = p["scores"][p["reference"]]
        correct = int(p["prediction"] == p["reference"])
        per_task[p["task"]]["records"].append([p["id"], correct, round(p_ref, 6)])
    return per_task


def _curve(bundle, version: str) -> list[list[float]]:
    """[[step, accuracy, answer NLL], ...] of A while `version` trained: the step-stamped rows
    `continue --watch` published to the bundle's evals.jsonl."""
    points: dict[int, dict] = {}
    for row in bundle.read_evals():
        ours = row.get("version") == version and row.get("step") is not None
        if ours and row["task"] == TASK_A and row["metric"] in ("accuracy", "answer_nll"):
            points.setdefault(int(row["step"]), {})[row["metric"]] = row["value"]
    return [[s, p.get("accuracy"), p.get("answer_nll")] for s, p in sorted(points.items())]


def _die_with_parent() -> None:
    """Worker initializer: on Linux a worker ends when the study process does (killing the study
    would otherwise leave its workers training into the study's directories)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _phase_a(job: dict, root: Path, snapshot: Path, a_json: Path) -> None:
    """init-experts and train A; the A version is kept as `snapshot`, its scores in `a_json`."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe
    from medqwen_cli.training.run import continue_bundle

    shutil.rmtree(snapshot, ignore_errors=True)
    work = root / "a-work"
    shutil.rmtree(work, ignore_errors=True)
    summary = init_experts(build_recipe(job["recipe"], check_paths=False), work / "bundle")
    result = continue_bundle(work / "bundle", task=TASK_A, evaluate=False)
    scores = _scores(Bundle.open(work / "bundle"), result.version, [TASK_A, TASK_B, TASK_C], work)
    fingerprint = Bundle.open(work / "bundle").manifest.base["fingerprint"]
    phase = {
        "version": result.version, "trainable_params": summary.trainable_params,
        "loss": result.final_loss, "seconds": result.seconds, "scores": scores,
        "env": run_env(fingerprint),
    }  # fmt: skip
    os.replace(work / "bundle", snapshot)
    shutil.rmtree(work, ignore_errors=True)
    a_json.write_text(json.dumps(phase), encoding="utf-8")


def run_job(job: dict) -> dict:
    """Train and score one (method, seed) through A (unless another job of the same (method,
    seed) did: the A phase runs under a lock), then each requested (strategy, pair) from that A
    version; returns its result."""
    import torch

    torch.set_num_threads(1)
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe
    from medqwen_cli.training.run import continue_bundle, train_bundle

    start = time.perf_counter()
    root = Path(job["dir"])
    snapshot, a_json = root / "after-A", root / "after-A.json"
    root.mkdir(parents=True, exist_ok=True)
    with (root / "a.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not a_json.is_file():  # phase A (shared by the cells)
            _phase_a(job, root, snapshot, a_json)
    phase_a = json.loads(a_json.read_text(encoding="utf-8"))
    out = {
        "trainable_params": phase_a["trainable_params"], "loss_A": phase_a["loss"],
        "after_A": phase_a["scores"], "env": phase_a.get("env"), "cells": {},
    }  # fmt: skip
    for strategy, pair in job["cells"]:  # every strategy's B phase starts from the same A
        task = PAIRS[pair]
        work = root / re.sub(r"[^A-Za-z0-9.]+", "-", f"{strategy}-{pair}")
        shutil.rmtree(work, ignore_errors=True)
        if strategy == "joint":  # from the same init (seeded): A and B mixed, same total steps
            init_experts(build_recipe(job["recipe"], check_paths=False), work / "bundle")
            steps = 2 * job["recipe"]["train"]["max_steps"]
            result = train_bundle(
                work / "bundle", tasks=[TASK_A, task], watch=[TASK_A],
                eval_every=job["eval_every"], overrides=[f"train.max_steps={steps}"],
            )  # fmt: skip
        else:
            shutil.copytree(snapshot, work / "bundle")
            result = continue_bundle(
                work / "bundle", task=task, evaluate=False, watch=[TASK_A],
                eval_every=job["eval_every"], overrides=strategy_overrides(strategy),
            )  # fmt: skip
        bundle = Bundle.open(work / "bundle")
        scores = _scores(bundle, result.version, [TASK_A, task], work)
        out["cells"].setdefault(strategy, {})[pair] = {
            "task": task, "loss": result.final_loss, "seconds": result.seconds,
            "steps": result.steps, "curve": _curve(bundle, result.version), "scores": scores,
            "continual": result.continual,
        }  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def base_scores(args: argparse.Namespace, out: Path) -> dict:
    """The base's zero-shot scores on A, B and C (method-independent: computed once per base
    fingerprint)."""
    from medqwen_cli.bundle import Bundle
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import build_recipe

    work = Path(tempfile.mkdtemp(prefix="base-", dir=out))
    try:
        init_experts(build_recipe(recipe_for(args, "lora", 0), check_paths=False), work / "b")
        return _scores(Bundle.open(work / "b"), "base", [TASK_A, TASK_B, TASK_C], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- statistics


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of a 95% Student t interval; the bounds are the mean for n = 1."""
    n, mean = len(values), statistics.mean(values)
    if n < 2:
        return mean, mean, mean
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided sign-flip (paired permutation) test of mean difference 0: the share of
    the 2^n sign assignments whose |mean| is at least the observed |mean|."""
    observed = abs(sum(diffs))
    hits = sum(
        abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(diffs))
    )
    return hits / 2 ** len(diffs)


def fmt_ci(values: list[float], digits: int = 3) -> str:
    mean, lo, hi = t_interval(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


_CONFLICTING: set[str] = set()


def conflicting_ids() -> set[str]:
    """Ids of A's eval records whose answer B's rules contradict (the records' meta says so)."""
    if not _CONFLICTING:
        from medqwen_cli.data.readers import load_records
        from medqwen_cli.modeling import data_cache_dir
        from medqwen_cli.recipe import DatasetSpec

        spec = DatasetSpec(path=f"builtin:{TASK_A}")
        for record in load_records(spec, "eval", cache_dir=data_cache_dir()):
            if record.meta.get("conflicts_with_other_convention"):
                _CONFLICTING.add(record.id)
    return _CONFLICTING


def kept_accuracy(records: list[list]) -> float:
    """Accuracy on the records B does not contradict ([id, correct, p_ref] rows)."""
    kept = [correct for rid, correct, _ in records if rid not in conflicting_ids()]
    return sum(kept) / len(kept)


MEASURES = {  # name -> (definition, function of one run and pair)
    "A after A": ("accuracy on A right after training A (plasticity)",
                  lambda r, p: r["after_A"][TASK_A]["acc"]),
    "A after B": ("accuracy on A after training the pair's second task (retention)",
                  lambda r, p: r["pairs"][p]["scores"][TASK_A]["acc"]),
    "drop of A": ("A after A - A after B (forgetting, absolute)",
                  lambda r, p: r["after_A"][TASK_A]["acc"] - r["pairs"][p]["scores"][TASK_A]["acc"]),
    "A during B": ("mean accuracy on A over the curve's points after step 0 (area under the "
                   "forgetting curve: how fast A is lost)",
                   lambda r, p: statistics.mean(c[1] for c in r["pairs"][p]["curve"] if c[0] > 0)),
    "A after B, uncontradicted": (
        "accuracy after the second task on A's records whose answers B does not contradict",
        lambda r, p: kept_accuracy(r["pairs"][p]["scores"][TASK_A]["records"])),
    "B after B": ("accuracy on the second task after training it (plasticity)",
                  lambda r, p: r["pairs"][p]["scores"][PAIRS[p]]["acc"]),
    "NLL A after A": ("answer NLL on A right after training A",
                      lambda r, p: r["after_A"][TASK_A]["nll"]),
    "NLL rise of A": ("answer NLL on A after the second task - right after A",
                      lambda r, p: r["pairs"][p]["scores"][TASK_A]["nll"] - r["after_A"][TASK_A]["nll"]),
}  # fmt: skip


def summarise(runs: list[dict], pair: str) -> str:
    """Markdown: per-label means with 95% intervals, then paired differences."""
    runs = [r for r in runs if pair in r["pairs"]]
    if not runs:
        return f"(no finished {pair} runs)"
    labels = list(dict.fromkeys(r["label"] for r in runs))
    names = list(MEASURES)
    timed = all("steps" in r["pairs"][pair] for r in runs)  # older results files have no steps
    lines = [
        "| method | seeds | trainable params | " + " | ".join(names)
        + (" | s/step of B |" if timed else " |"),
        "|---|---|---|" + "---|" * (len(names) + timed),
    ]  # fmt: skip
    for label in labels:
        rows = [r for r in runs if r["label"] == label]
        cells = [fmt_ci([MEASURES[m][1](r, pair) for r in rows]) for m in names]
        if timed:  # one-thread workers sharing the machine: compare within a results file only
            cells.append(fmt_ci([r["pairs"][pair]["seconds"] / r["pairs"][pair]["steps"]
                                 for r in rows], 2))  # fmt: skip
        lines.append(
            f"| {label} | {len(rows)} | {rows[0]['trainable_params']:,} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "| difference (same seeds) | seeds | measure | mean [95% CI] | sign-flip p | first larger |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["label"], r["seed"]): r for r in runs}
    against_none = [  # each strategy against none, same method and seeds
        (r["label"], r["label"][: -len(r["strategy"]) - 1])
        for r in runs if r.get("strategy", "none") != "none"
    ]  # fmt: skip
    # the methods under the same strategy (sslora's spectral branch against lora's random one)
    strategies = dict.fromkeys(r["strategy"] for r in runs if r.get("strategy", "none") != "none")
    across = [(f"{x} {s}", f"{y} {s}") for s in strategies for x, y in COMPARISONS]
    for x, y in [*COMPARISONS, *dict.fromkeys(against_none), *across]:
        seeds = sorted(s for (label, s) in by if label == x and (y, s) in by)
        if not seeds:
            continue
        for name in ("A after B", "A during B", "drop of A", "A after A", "B after B",
                     "NLL rise of A"):  # fmt: skip
            f = MEASURES[name][1]
            diffs = [f(by[(x, s)], pair) - f(by[(y, s)], pair) for s in seeds]
            wins = sum(d > 0 for d in diffs)
            lines.append(
                f"| {x} - {y} | {len(seeds)} | {name} | {fmt_ci(diffs)} | "
                f"{sign_flip_p(diffs):.3f} | {wins}/{len(seeds)} |"
            )
    return "\n".join(lines)


def targets_table(runs: list[dict], pair: str) -> str:
    """Markdown, when some run used a strategy: per configuration, the share of A it kept
    (A after B / A after A, per seed), B after B, whether both mean values reach 0.95 (issue 21's
    target: about 5 % forgetting with the new task learned), and what B trained and added."""
    runs = [r for r in runs if pair in r["pairs"]]
    if all(r.get("strategy", "none") == "none" for r in runs):
        return ""
    lines = [
        "| configuration | seeds | A kept (A after B / A after A) | B after B | both >= 0.95 | "
        "params trained in B | params added by B |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in dict.fromkeys(r["label"] for r in runs):
        rows = [r for r in runs if r["label"] == label]
        kept = [MEASURES["A after B"][1](r, pair) / MEASURES["A after A"][1](r, pair) for r in rows]
        plastic = [MEASURES["B after B"][1](r, pair) for r in rows]
        met = statistics.mean(kept) >= 0.95 and statistics.mean(plastic) >= 0.95
        added = max(  # a branch per protected B phase (the same size on every seed)
            sum((r["pairs"][pair].get("continual") or {}).get("branch_params") or [0]) for r in rows
        )
        lines.append(
            f"| {label} | {len(rows)} | {fmt_ci(kept)} | {fmt_ci(plastic)} | "
            f"{'yes' if met else 'no'} | {rows[0]['trainable_params']:,} | {added:,} |"
        )
    return "\n".join(lines)


def curve_table(runs: list[dict], pair: str) -> str:
    """Mean accuracy (and NLL) of A over seeds at each watched step of the second task."""
    runs = [r for r in runs if pair in r["pairs"]]
    labels = list(dict.fromkeys(r["label"] for r in runs))
    if not labels:
        return ""
    steps = sorted({int(p[0]) for r in runs for p in r["pairs"][pair]["curve"]})
    lines = [
        "| method | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for label in labels:
        cells = []
        for step in steps:
            acc = [
                p[1] for r in runs if r["label"] == label
                for p in r["pairs"][pair]["curve"] if int(p[0]) == step
            ]  # fmt: skip
            cells.append(f"{statistics.mean(acc):.3f}" if acc else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: list[dict], base: dict | None, path: Path) -> None:
    """A's accuracy and answer NLL while training the second task: mean over seeds with a
    band of one standard deviation, one line per method; conflict and control side by side.
    `joint` runs are left out (their curve starts at the init and runs twice the steps)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in runs if r.get("strategy") != "joint"]
    pairs = [p for p in PAIRS if any(p in r["pairs"] for r in runs)]
    fig = Figure(figsize=(6.2 * len(pairs), 7.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(pairs), squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in runs))
    for col, pair in enumerate(pairs):
        for row, (index, what) in enumerate(((1, "accuracy"), (2, "answer NLL"))):
            ax = axes[row][col]
            for label in labels:
                curves = [
                    r["pairs"][pair]["curve"]
                    for r in runs
                    if r["label"] == label and pair in r["pairs"]
                ]
                if not curves:
                    continue
                steps = sorted({int(p[0]) for c in curves for p in c})
                mean, sd = [], []
                for s in steps:
                    vals = [p[index] for c in curves for p in c if int(p[0]) == s]
                    mean.append(statistics.mean(vals))
                    sd.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                line = ax.plot(steps, mean, marker="o", label=f"{label} ({len(curves)} seeds)")[0]
                ax.fill_between(
                    steps, [m - d for m, d in zip(mean, sd, strict=True)],
                    [m + d for m, d in zip(mean, sd, strict=True)], color=line.get_color(), alpha=0.15,
                )  # fmt: skip
            if base is not None:
                key = "acc" if index == 1 else "nll"
                ax.axhline(
                    base[TASK_A][key], color="grey", linestyle="--", label="base (zero-shot)"
                )
            ax.set_xlabel(f"optimizer step while training {PAIRS[pair]}")
            ax.set_ylabel(f"{TASK_A} {what}")
            kind = "conflicting rules" if pair == "conflict" else "same rules"
            ax.set_title(f"{pair}: {TASK_A} -> {PAIRS[pair]} ({kind})", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"Forgetting curve: {TASK_A} scored while the next task trains\n"
        "(mean over seeds, band = 1 sd)", fontsize=11,
    )  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.print_png(str(tmp))
    os.replace(tmp, path)


def comparable(results: dict, settings: dict | None) -> tuple[list[dict], list[str]]:
    """(the runs the tables use, why the others were left out). A run is used when its settings
    match and it ran on the base the zero-shot row was scored on (same fingerprint; a results
    file from before fingerprints were recorded has none anywhere, and pairs them all)."""
    wanted = (results.get("base_settings") or {}).get("fingerprint")
    runs, left = [], {}
    for run in results["runs"]:
        if settings is not None and run["settings"] != settings:
            why = "other settings"
        elif fingerprint_of(run) != wanted:
            why = f"base fingerprint {fingerprint_of(run) or 'not recorded'}"
        else:
            runs.append(run)
            continue
        left[why] = left.get(why, 0) + 1
    runs.sort(key=lambda run: strategy_order(run.get("strategy", "none")))  # stable: methods
    notes = [f"{n} run(s) on {why}" for why, n in left.items()]
    if notes:
        notes = [f"left out: {', '.join(notes)}; the tables pair only runs on base "
                 f"{wanted or '(fingerprint not recorded)'} and these settings"]  # fmt: skip
    return runs, notes


def plot_tradeoff(runs: list[dict], path: Path, pair: str = "conflict") -> None:
    """Retention against plasticity, one point per configuration (method and strategy), mean
    over seeds with 95% intervals both ways: y = A after B / A after A (the share of A kept),
    x = B after B. The targets (y >= 0.95, x >= 0.95: the paper's "about 5 % forgetting" with B
    learned) bound the shaded corner."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in runs if pair in r["pairs"]]
    fig = Figure(figsize=(9.6, 5.4), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    # one colour per strategy (shared by the methods), one marker per method
    strategies = list(dict.fromkeys(r.get("strategy", "none") for r in runs))
    colours = {s: f"C{i % 10}" for i, s in enumerate(strategies)}
    markers = dict(zip(METHODS, "osD^", strict=True))
    lowest = 0.95
    for label in dict.fromkeys(r["label"] for r in runs):
        rows = [r for r in runs if r["label"] == label]
        x = t_interval([MEASURES["B after B"][1](r, pair) for r in rows])
        y = t_interval([MEASURES["A after B"][1](r, pair) / MEASURES["A after A"][1](r, pair)
                        for r in rows])  # fmt: skip
        lowest = min(lowest, x[0] if math.isnan(x[1]) else x[1])
        ax.errorbar(
            x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
            marker=markers.get(rows[0]["method"], "o"), color=colours[rows[0].get("strategy", "none")],
            markersize=7, capsize=3, alpha=0.85, label=f"{label} ({len(rows)} seeds)",
        )  # fmt: skip
    left = max(0.0, math.floor((lowest - 0.02) * 20) / 20)  # B after B is the narrow axis
    ax.fill_between(
        [0.95, 1.05], 0.95, 1.1, color="green", alpha=0.08, label="targets: both >= 0.95"
    )
    ax.set_xlabel(f"B after B: accuracy on {PAIRS[pair]} after training it (plasticity)")
    ax.set_ylabel(f"A after B / A after A: share of {TASK_A} kept (retention)")
    ax.set_title(f"{pair}: {TASK_A} -> {PAIRS[pair]}, mean and 95% interval over seeds "
                 "(colour: strategy, marker: method)", fontsize=10)  # fmt: skip
    ax.set_xlim(left, 1.02)
    ax.set_ylim(0, 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.print_png(str(tmp))
    os.replace(tmp, path)


def report(results: dict, settings: dict | None) -> str:
    runs, notes = comparable(results, settings)
    base = results.get("base")
    parts = list(notes)
    envs = {}
    for run in runs:
        env = run.get("env")
        if env:
            key = f"{env['cpu']}, torch {env['torch']}, {env['threads']} thread(s)"
            envs[key] = envs.get(key, 0) + 1
    if envs:
        parts.append("ran on: " + "; ".join(f"{k} ({n} runs)" for k, n in envs.items()))
    if base:
        parts.append(
            "base (zero-shot): "
            + ", ".join(f"{t} {v['acc']:.3f} (NLL {v['nll']:.3f})" for t, v in base.items())
        )
    sequential = [r for r in runs if r.get("strategy") != "joint"]
    joint = [r for r in runs if r.get("strategy") == "joint"]
    for pair in PAIRS:
        parts += [f"## {pair}: {TASK_A} -> {PAIRS[pair]}", summarise(runs, pair), "",
                  f"{TASK_A} accuracy while training {PAIRS[pair]} (mean over seeds):",
                  curve_table(sequential, pair)]  # fmt: skip
        if any(pair in r["pairs"] for r in joint):  # from the init, twice the steps
            parts += ["", f"{TASK_A} accuracy during joint training ({TASK_A} and "
                      f"{PAIRS[pair]} mixed from the init; mean over seeds):",
                      curve_table(joint, pair)]  # fmt: skip
        targets = targets_table(runs, pair)
        if targets:
            parts += ["", "Targets (kept >= 0.95 of A with B after B >= 0.95):", targets]
    parts.append("definitions: " + "; ".join(f"{k} = {v[0]}" for k, v in MEASURES.items()))
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
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
        "energy E), joint (no B phase: A and B mixed from the init for twice the steps, the "
        "upper bound)",
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
        help="draw retention (A after B) against plasticity (B after B) to this PNG",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="print the tables, run nothing")
    parser.add_argument("--quick", action="store_true", help="tiny-qwen2-vl, 1 seed, 4 steps")
    args = parser.parse_args()
    for strategy in args.strategies:
        try:
            strategy_overrides(strategy)
        except ValueError as exc:
            parser.error(str(exc))
    if args.quick:
        args.base, args.seeds, args.steps, args.samples = "tiny-qwen2-vl", [0], 4, 8
        args.lr, args.eval_every, args.methods = 1e-3, 2, ["lora", "sslora"]
    results_file = args.results or args.out / "results.json"
    args.out.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": []}
    settings = cell_settings(args)
    if not args.report_only:
        os.environ["OMP_NUM_THREADS"] = "1"  # the workers inherit it: one thread each
        results["machine"] = (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        from medqwen_cli.modeling import resolve_base

        fingerprint = resolve_base(args.base).fingerprint  # builds a preset once, here
        wanted = {"base": args.base, "samples": args.samples, "fingerprint": fingerprint}
        if results.get("base_settings") != wanted:
            if any(fingerprint_of(r) != fingerprint for r in results["runs"]):
                sys.exit(
                    f"{results_file} holds runs on another base build than {args.base} "
                    f"{fingerprint}: start a new results file (--results) so runs pair like "
                    "with like"
                )
            results["base"] = base_scores(args, args.out)
            results["base_settings"] = wanted
            _write(results_file, results)

        def find(label: str, seed: int) -> dict | None:
            return next(
                (r for r in results["runs"]
                 if r["label"] == label and r["seed"] == seed and r["settings"] == settings
                 and fingerprint_of(r) == fingerprint),
                None,
            )  # fmt: skip

        def job(method: str, seed: int, cells: list) -> dict:
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", label_of(method, args.sets))
            return {
                "method": method, "seed": seed, "cells": cells,
                "dir": str(args.out / f"{args.base}-{slug}-seed{seed}"),
                "recipe": recipe_for(args, method, seed, args.sets), "eval_every": args.eval_every,
            }  # fmt: skip

        jobs = [  # one per cell, in the order of the strategies given (the first run first)
            job(method, seed, [(strategy, pair)])
            for strategy, pair, seed, method in itertools.product(
                args.strategies, args.pairs, args.seeds, args.methods
            )
            if pair not in (find(label_of(method, args.sets, strategy), seed) or {"pairs": {}})["pairs"]
        ]  # fmt: skip
        if not args.pairs:  # A only
            jobs = [
                job(method, seed, [])
                for seed, method in itertools.product(args.seeds, args.methods)
                if find(label_of(method, args.sets), seed) is None
            ]
        with ProcessPoolExecutor(
            args.workers, mp_context=get_context("spawn"), initializer=_die_with_parent
        ) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                run = future.result()
                cells = run.pop("cells") or {"none": {}}
                for strategy, pairs in cells.items():
                    label = label_of(job["method"], args.sets, strategy)
                    done = find(label, job["seed"])
                    if done is None:
                        results["runs"].append({
                            "method": job["method"], "strategy": strategy, "label": label,
                            "seed": job["seed"], "settings": settings, **run, "pairs": pairs,
                        })  # fmt: skip
                    else:
                        done["pairs"].update(pairs)
                _write(results_file, results)
                print(f"{job['method']} seed {job['seed']} {job['cells']}: {run['seconds']} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    print(report(results, settings))
    print(f"machine: {results.get('machine')}; settings: {settings}")
    runs, _ = comparable(results, settings)
    if args.plot:
        plot_curves(runs, results.get("base"), args.plot)
    if args.tradeoff:
        plot_tradeoff(runs, args.tradeoff)


if __name__ == "__main__":
    main()

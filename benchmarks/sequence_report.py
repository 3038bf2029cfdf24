"""The sequence study's report: from benchmarks/results/sequence-study.json to tables and a figure.

Per (method, strategy), over the seeds present (every number says its seeds; means with a 95 %
Student t interval over seeds), on the unseen-phrasing split unless said:

    R[i][j]     accuracy on task j after the i-th task was learned (the accuracy matrix)
    ACC         mean over the five tasks of the final accuracy
    BWT         mean over tasks 1-4 of (final - just learned)
    forgetting  mean over tasks 1-4 of (best since learned - final) (Chaudhry et al.)
    final/learned j   final accuracy / accuracy just after task j was learned (above 1: later
                tasks fixed some of its answers, which says nothing of what they broke: `lost`
                counts that)
    lost j      share of task j's records right just after it was learned and wrong at the end
    gap         final accuracy on the in-template split minus the unseen split (what memorised
                phrasing adds)

joint (the five mixed from the init, five times the steps) is the upper bound. The targets
compare protect with joint seed by seed (the same seeds' init), and ACC's difference also with a
bootstrap over records (every seed scores the same records: resampling them says how much the
difference owes to which records were drawn). Replay cells run at several shares also get
the smallest share that keeps every task (sequence_replay.py). A protect cell is named with the
energy it ran at (`protect` alone: the defaults of its code). Only cells with the same settings, preset
fingerprint, CPU and torch are compared; the report names what it left out.

    python benchmarks/sequence_report.py [--results FILE] [--figure PNG]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sequence_study import RESULTS, TASKS  # noqa: E402
from study_stats import fmt_ci, t_interval  # noqa: E402

PROBES = RESULTS.parent / "sequence-probes.json"  # sequence_probe.py's results

EARLIER = TASKS[:-1]
KEPT, LOST, LAST, ACC_GAP = 0.95, 0.05, 0.95, 0.03  # the targets of protect against joint


def acc(step: dict, task: str, split: str = "") -> float | None:
    scored = step["scores"]["tasks"].get(task + split)
    return None if scored is None else scored["acc"]


def outcomes(step: dict, task: str) -> dict[str, int]:
    return {rid: ok for rid, ok, *_ in step["scores"]["tasks"][task]["records"]}


def matrix(cell: dict) -> list[list[float | None]]:
    return [[acc(step, t) for t in TASKS] for step in cell["steps"]]


def measures(cell: dict) -> dict:
    """ACC, BWT, forgetting, the template gap, and per earlier task final/learned and lost, of one cell."""
    r, steps = matrix(cell), cell["steps"]
    final = r[-1]
    out = {
        "ACC": statistics.mean(final),
        "BWT": statistics.mean(final[j] - r[j][j] for j in range(len(EARLIER))),
        "forgetting": statistics.mean(
            max(r[i][j] for i in range(j, len(r))) - final[j] for j in range(len(EARLIER))
        ),
        "gap": statistics.mean(acc(steps[-1], t, "-template") - acc(steps[-1], t) for t in TASKS),
    }
    for j, task in enumerate(EARLIER):
        then, now = outcomes(steps[j], task), outcomes(steps[-1], task)
        out[f"final/learned {task}"] = final[j] / r[j][j] if r[j][j] else float("nan")
        out[f"lost {task}"] = sum(then[k] and not now[k] for k in then) / len(then)
    return out


def setting(cell: dict) -> tuple:
    env = cell["env"]
    return (json.dumps(cell["settings"], sort_keys=True), env.get("base_fingerprint"),
            env.get("cpu"), env.get("torch"))  # fmt: skip


def comparable(results: dict) -> tuple[list[dict], list[str]]:
    """The cells of the most common setting, and one line per cell left out."""
    cells = list(results["cells"].values())
    if not cells:
        return [], []
    common = statistics.mode(setting(c) for c in cells)
    left = [f"{c['method']}/{c['seed']}/{c['strategy']}: another setting {setting(c)}"
            for c in cells if setting(c) != common]  # fmt: skip
    return [c for c in cells if setting(c) == common], left


def label(cell: dict) -> str:
    """The cell's strategy with the protect energy it ran at: `protect` means the defaults of
    the code that ran it, so `protect@lr=0.0006` at 0.99 shows as `protect:0.99@lr=0.0006`."""
    name, at, rest = cell["strategy"].partition("@")
    energy = {(s.get("continual") or {}).get("protect_energy") for s in cell["steps"][1:]} - {None}
    parts = [f"protect:{next(iter(energy)):g}" if p == "protect" and len(energy) == 1 else p
             for p in name.split("+")]  # fmt: skip
    return "+".join(parts) + at + rest


def groups_of(cells: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in sorted(cells, key=lambda c: (c["method"], label(c), c["seed"])):
        groups.setdefault((cell["method"], label(cell)), []).append(cell)
    return groups


def seeds(group: list[dict]) -> str:
    return ",".join(str(c["seed"]) for c in group)


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows)]  # fmt: skip


def strategies(groups: dict) -> list[str]:
    head = ["method", "strategy", "seeds", "ACC", "BWT", "forgetting", "gap",
            *(f"final/learned {t}" for t in EARLIER), *(f"lost {t}" for t in EARLIER)]  # fmt: skip
    rows = []
    for (method, strategy), group in groups.items():
        if strategy == "joint":
            final = [statistics.mean(acc(c["steps"][0], t) for t in TASKS) for c in group]
            gap = [statistics.mean(acc(c["steps"][0], t, "-template") - acc(c["steps"][0], t)
                                   for t in TASKS) for c in group]  # fmt: skip
            rows.append([method, "joint", seeds(group), fmt_ci(final), "", "", fmt_ci(gap)]
                        + [""] * (2 * len(EARLIER)))  # fmt: skip
            continue
        m = [measures(c) for c in group]
        rows.append(
            [method, strategy, seeds(group)] + [fmt_ci([x[k] for x in m]) for k in head[3:]]
        )
    return table(head, rows)


def summary(groups: dict) -> list[str]:
    """One row per (method, strategy): ACC, the lowest final/learned and most lost over the earlier
    tasks (each a seed mean first), and each task's accuracy just after it was learned."""
    head = ["method", "strategy", "seeds", "ACC", "lowest final/learned (task)", "most lost (task)",
            *(f"{t} learned" for t in TASKS)]  # fmt: skip
    rows = []
    for (method, strategy), group in groups.items():
        if strategy == "joint":
            learned = [fmt_ci([acc(c["steps"][0], t) for c in group]) for t in TASKS]
            final = [statistics.mean(acc(c["steps"][0], t) for t in TASKS) for c in group]
            rows.append([method, "joint (upper bound)", seeds(group), fmt_ci(final), "", "",
                         *learned])  # fmt: skip
            continue
        m = [measures(c) for c in group]
        kept = {t: statistics.mean(x[f"final/learned {t}"] for x in m) for t in EARLIER}
        lost = {t: statistics.mean(x[f"lost {t}"] for x in m) for t in EARLIER}
        low, high = min(kept, key=kept.get), max(lost, key=lost.get)
        learned = [fmt_ci([matrix(c)[j][j] for c in group]) for j in range(len(TASKS))]
        rows.append([method, strategy, seeds(group), fmt_ci([x["ACC"] for x in m]),
                     f"{kept[low]:.3f} ({low})", f"{lost[high]:.1%} ({high})", *learned])  # fmt: skip
    return table(head, rows)


def bootstrap_acc_gap(ours: list[dict], joint: list[dict], draws: int = 2000) -> tuple:
    """95 % interval of mean over seeds of ACC(ours) - ACC(joint), resampling each task's eval
    records (the same records in every cell) with replacement; seeds paired."""
    import numpy as np

    rng = np.random.default_rng(0)
    diffs = np.zeros(draws)
    for task in TASKS:
        ids = sorted(outcomes(ours[0]["steps"][-1], task))

        def right(c: dict, step: int, task: str = task, ids: list = ids) -> np.ndarray:
            return np.array([outcomes(c["steps"][step], task)[i] for i in ids])

        delta = np.mean([right(a, -1) - right(b, 0) for a, b in zip(ours, joint, strict=True)], 0)
        picks = rng.integers(0, len(ids), size=(draws, len(ids)))
        diffs += delta[picks].mean(1) / len(TASKS)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def verdict(values: list[float], ok) -> str:
    """met / missed when the whole seed interval is on one side, else unclear (one seed: mean)."""
    mean, lo, hi = t_interval(values)
    if len(values) < 2:
        return "met (1 seed)" if ok(mean) else "missed (1 seed)"
    return "met" if ok(lo) and ok(hi) else "missed" if not ok(lo) and not ok(hi) else "unclear"


def target_rows(group: list[dict], joint: dict[int, dict]) -> list[tuple[str, str, str]]:
    """(measure, target, "mean [interval] verdict") of one strategy's cells paired with joint's."""
    paired = [c for c in group if c["seed"] in joint]
    m, js = [measures(c) for c in paired], [joint[c["seed"]] for c in paired]
    rows = []

    def row(name: str, target: str, values: list[float], ok) -> None:
        rows.append((name, target, f"{fmt_ci(values)} {verdict(values, ok)}"))

    for task in EARLIER:
        row(f"{task} final / just learned", f">= {KEPT}", [x[f"final/learned {task}"] for x in m],
            lambda v: v >= KEPT)  # fmt: skip
    row("most records lost by an earlier task", f"<= {LOST:.0%}",
        [max(x[f"lost {t}"] for t in EARLIER) for x in m], lambda v: v <= LOST)  # fmt: skip
    row(f"{TASKS[-1]} / joint's", f">= {LAST}",
        [acc(c["steps"][-1], TASKS[-1]) / acc(j["steps"][0], TASKS[-1])
         for c, j in zip(paired, js, strict=True)], lambda v: v >= LAST)  # fmt: skip
    gap = [x["ACC"] - statistics.mean(acc(j["steps"][0], t) for t in TASKS)
           for x, j in zip(m, js, strict=True)]  # fmt: skip
    row("ACC - joint's ACC", f">= -{ACC_GAP}", gap, lambda v: v >= -ACC_GAP)
    lo, hi = bootstrap_acc_gap(paired, js)
    ok = "met" if lo >= -ACC_GAP else "missed" if hi < -ACC_GAP else "unclear"
    rows.append(("ACC - joint's ACC, bootstrap over records", f">= -{ACC_GAP}",
                 f"[{lo:.3f}, {hi:.3f}] {ok}"))  # fmt: skip
    return rows


def targets(groups: dict) -> list[str]:
    """Per method, one table: each strategy's measures against joint, seed by seed."""
    lines = []
    for method in sorted({m for m, _ in groups}):
        joint = {c["seed"]: c for c in groups.get((method, "joint"), [])}
        columns = {s: target_rows(g, joint) for (m, s), g in groups.items() if m == method
                   and s != "joint" and any(c["seed"] in joint for c in g)}  # fmt: skip
        if not columns:
            continue
        names = list(columns)
        first = columns[names[0]]
        rows = [[name, target, *(columns[s][i][2] for s in names)]
                for i, (name, target, _) in enumerate(first)]  # fmt: skip
        paired = {s: seeds([c for c in groups[(method, s)] if c["seed"] in joint]) for s in names}
        head = ["measure", "target", *(f"{s} (seeds {paired[s]})" for s in names)]
        lines += [f"{method}, against joint (the same seeds):", "", *table(head, rows), ""]
    return lines or ["No joint cell shares a seed with another cell yet: nothing is judged.", ""]


def matrices(groups: dict) -> list[str]:
    lines = []
    for (method, strategy), group in groups.items():
        if strategy == "joint":
            continue
        mats = [matrix(c) for c in group]
        rows = []
        for i, task in enumerate(TASKS):
            cells = [[m[i][j] for m in mats] for j in range(len(TASKS))]
            rows.append([task] + ["" if None in v else f"{statistics.mean(v):.3f}" for v in cells])
        lines += [f"{method}, {strategy}, seeds {seeds(group)} (row: after that task):", "",
                  *table(["after", *TASKS], rows), ""]  # fmt: skip
    return lines


def costs(groups: dict) -> list[str]:
    """Per task, seed means: where a cell's time goes, what each task adds, and the training
    loss of its last batch (how far its 50 steps got; one batch of 8, so noisy)."""
    head = ["method", "strategy", "task", "train s", "other s", "scoring s", "records/s",
            "trained", "frozen", "bases MB", "adapter MB", "last batch loss"]  # fmt: skip
    rows = []
    for (method, strategy), group in groups.items():
        for i, step in enumerate(group[0]["steps"]):
            per = [c["steps"][i] for c in group]

            def mean(values: list) -> str:
                values = [v for v in values if v is not None]
                return f"{statistics.mean(values):.0f}" if values else "(shared)"

            train = [s.get("seconds", s.get("train_seconds")) for s in per]
            other = [s["command_seconds"] - t if "command_seconds" in s else None
                     for s, t in zip(per, train, strict=True)]  # fmt: skip
            trained = per[0]["costs"]["trained_in_version"]
            frozen = (per[0]["costs"]["adapter_parameters"] or 0) - (trained or 0)

            def size(name: str, per: list = per) -> float:
                return statistics.mean(s["costs"]["bytes"].get(name, 0) for s in per) / 1e6

            rows.append([method, strategy, step["task"], mean(train),
                         mean(other), mean([s["scores"]["seconds"] for s in per]),
                         f"{statistics.mean(s['scores']['records_per_s'] for s in per):.1f}",
                         f"{trained / 1e6:.2f} M", f"{frozen / 1e6:.2f} M",
                         f"{size('protect.safetensors'):.1f}", f"{size('adapter.safetensors'):.1f}",
                         loss_of(per)])  # fmt: skip
    total = []
    for (method, strategy), group in groups.items():
        secs = [c["seconds"] for c in group]
        total.append([method, strategy, seeds(group), f"{statistics.mean(secs) / 60:.1f}",
                      f"{min(secs) / 60:.1f} - {max(secs) / 60:.1f}"])  # fmt: skip
    return [*table(head, rows), "", "Minutes per cell (the shared first task excluded):", "",
            *table(["method", "strategy", "seeds", "mean", "range"], total)]  # fmt: skip


def loss_of(steps: list[dict]) -> str:
    losses = [s["loss"] for s in steps if s.get("loss") is not None]
    return f"{statistics.mean(losses):.3f}" if losses else "(shared)"


def contradicting() -> dict[str, set[str]]:
    """Per task, the ids of its eval records (unseen split) whose answer some earlier task's
    rules give otherwise (the generated records' meta says which)."""
    from sequence_study import RECIPE

    from medqwen_cli.evaluation.task_records import load_eval_tasks
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.settings import Settings

    data = load_eval_tasks(load_recipe(RECIPE), TASKS,
                           data_dir=Settings.from_env().data_cache_dir, notes=[])  # fmt: skip
    return {t: {r.id for r in data[t].records if r.meta.get("contradicts")} for t in TASKS}


def by_contradiction(groups: dict) -> list[str]:
    """Each task's accuracy just after it was learned, on its records that contradict an
    earlier task and on the others (seed means)."""
    against = contradicting()
    head = ["method", "strategy", *(f"{t} learned: contradicting / agreeing" for t in TASKS[1:])]
    rows = []
    for (method, strategy), group in groups.items():
        shown = []
        for j, task in enumerate(TASKS[1:], start=1):
            parts = []
            for inside in (True, False):
                values = []
                for c in group:
                    step = c["steps"][0 if strategy == "joint" else j]
                    got = [ok for rid, ok in outcomes(step, task).items()
                           if (rid in against[task]) == inside]  # fmt: skip
                    values.append(sum(got) / len(got) if got else float("nan"))
                parts.append(f"{statistics.mean(values):.2f} ({len(got)})" if got else "-")
            shown.append(" / ".join(parts))
        rows.append([method, strategy, *shown])
    return table(head, rows)


def protect_layers(groups: dict) -> list[str]:
    """Per protect task: layer inputs full, the largest basis share, the new task's energy
    inside the earlier bases, the least energy held of an earlier task."""
    rows = []
    for (method, strategy), group in groups.items():
        if not strategy.startswith("protect"):
            continue
        for i, task in enumerate(TASKS[1:], start=1):
            info = [c["steps"][i]["continual"] for c in group]
            held = [min(x["least_held"].values()) for x in info if x.get("least_held")]
            rows.append([method, task, str(max(x["full_layers"] for x in info)),
                         f"{max(x['basis_share'][1] for x in info):.3f}",
                         f"{max(x['new_task_energy_in_bases'][1] for x in info):.4f}",
                         f"{min(held):.3f}" if held else ""])  # fmt: skip
    head = ["method", "task", "full layer inputs (most)", "largest basis share",
            "new task's energy inside bases (most)", "least energy held"]  # fmt: skip
    return table(head, rows) if rows else []


def report(results: dict, probes_file: Path | None = PROBES) -> str:
    from sequence_phrasing import lost_by_phrasing  # these import this module's measures
    from sequence_probe import probe_table
    from sequence_replay import replay_shares

    cells, left = comparable(results)
    groups = groups_of(cells)
    env = cells[0]["env"] if cells else {}
    settings = cells[0]["settings"] if cells else {}
    lines = [f"Cells: {len(cells)}; {env.get('cpu')}, {env.get('threads')} thread(s) per job, "
             f"torch {env.get('torch')}; base {settings.get('base') or 'nano-qwen2-vl'} "
             f"(fingerprint {env.get('base_fingerprint')}), {settings.get('steps')} steps of "
             f"batch 8 per task, {settings.get('samples')} eval records per task and split."]  # fmt: skip
    codes = Counter(c["env"].get("code", "not recorded") for c in cells)
    lines += ["Code: " + ", ".join(f"{k} ({n} cells)" for k, n in sorted(codes.items()))]
    lines += [f"Left out: {x}" for x in left]
    lines += ["", "## Summary (unseen phrasing; seed means, [95 % interval] with 2 seeds or more)",
              "", *summary(groups),
              "", "## Per strategy (unseen phrasing; mean [95 % interval] over seeds)", "",
              *strategies(groups), "", "## Targets (protect and the others against joint)", "",
              *targets(groups), "## Accuracy matrix R[i][j] (seed mean)", "", *matrices(groups),
              "## Contradicting records (records in brackets)", "", *by_contradiction(groups), "",
              *lost_by_phrasing(groups),
              "## Protected layers", "", *protect_layers(groups), "",
              *replay_shares(groups),
              *probe_table(probes_file),
              "## Costs per task (seed mean)", "", *costs(groups)]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=None, help="write the figure (PNG)")
    parser.add_argument("--probes", type=Path, default=None,
                        help=f"sequence_probe.py's results (default with the default --results: {PROBES.name})")  # fmt: skip
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    print(report(results, args.probes or (PROBES if args.results == RESULTS else None)))
    if args.figure:
        from sequence_plot import plot

        plot(results, args.figure)


if __name__ == "__main__":
    main()

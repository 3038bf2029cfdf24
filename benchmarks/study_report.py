"""The forgetting study's report: markdown tables of a results file (no torch).

Which runs it uses (`comparable`): the runs made with the invocation's settings on the base the
zero-shot row was scored on. Which runs it pairs: only cells continued from the same A version
of their (method, seed). Each (method, seed) has a reference A (the results file's `a_versions`,
else the first run of it in the file), A1; another A version of it (a retrain on another CPU)
is A2, A3, ... in order of appearance. When the file holds more than one, every row is labelled
with its A group ("lora [A2]"), differences are taken within one group only, and the report
lists the comparisons it refused.
"""

from __future__ import annotations

import statistics

from study_stats import (
    COMPARISONS,
    DIFFERENCES,
    MEASURES,
    PAIRS,
    TASK_A,
    a_digest,
    fmt_ci,
    record_changes,
    sign_flip_p,
)

TARGET = 0.95  # issue 21: "about 5 % forgetting" with the new task learned
TARGETS_HEADING = (
    f"Targets (A records lost <= {1 - TARGET:.2f} of those scored and B after B >= {TARGET:.2f}, "
    "means over seeds):"
)


def strategy_of(run: dict) -> str:
    return run.get("strategy") or "none"


def base_label(run: dict) -> str:
    """The run's label without its strategy: its method and `--set` items (its A's label)."""
    strategy = strategy_of(run)
    return run["label"] if strategy == "none" else run["label"][: -len(strategy) - 1]


def row_of(run: dict) -> str:
    return run.get("row", run["label"])


def cpu_of(run: dict, pair: str | None = None) -> str:
    """The CPU a cell's B phase ran on (`pair`), or its A phase; older files record one per run."""
    env = (run["pairs"][pair].get("env") if pair else None) or run.get("env") or {}
    cpu = env.get("cpu", "not recorded").replace("(R)", "").replace(" Processor", "")
    return " ".join(cpu.split())


def strategy_order(strategy: str) -> tuple:
    """Sort key of the tables: none, replay by fraction, protect by energy, joint."""
    kind, *values = strategy.split(":")
    rank = ("none", "replay", "protect", "joint")
    return (rank.index(kind) if kind in rank else len(rank), *map(float, values))


def reference_of(results: dict, label: str, seed: int) -> dict | None:
    """The results file's reference A version of (`label`, `seed`): {digest, cpu, ...}."""
    return next(
        (v for v in results.get("a_versions") or [] if v["label"] == label and v["seed"] == seed),
        None,
    )


def a_groups(results: dict, runs: list[dict]) -> dict[tuple[str, int], list[str]]:
    """(label, seed) -> its A digests, the reference first, then in order of appearance."""
    versions: dict[tuple[str, int], list[str]] = {}
    for run in runs:
        key = (base_label(run), run["seed"])
        if key not in versions:
            reference = reference_of(results, *key)
            versions[key] = [reference["digest"]] if reference else []
        if a_digest(run) not in versions[key]:
            versions[key].append(a_digest(run))
    return versions


def comparable(results: dict, settings: dict | None) -> tuple[list[dict], list[str]]:
    """(the runs the tables use, notes on what was left out and which A versions exist). A run
    is used when its settings match and it ran on the base the zero-shot row was scored on (same
    fingerprint; a results file from before fingerprints were recorded has none anywhere, and
    pairs them all). Each run comes back as a copy with its A digest, A group and row label."""
    wanted = (results.get("base_settings") or {}).get("fingerprint")
    runs, left = [], {}
    for run in results["runs"]:
        if settings is not None and run["settings"] != settings:
            why = "other settings"
        elif (run.get("env") or {}).get("base_fingerprint") != wanted:
            why = f"base fingerprint {(run.get('env') or {}).get('base_fingerprint') or 'not recorded'}"
        else:
            runs.append(run)
            continue
        left[why] = left.get(why, 0) + 1
    notes = [f"{n} run(s) on {why}" for why, n in left.items()]
    if notes:
        notes = [f"left out: {', '.join(notes)}; the tables pair only runs on base "
                 f"{wanted or '(fingerprint not recorded)'} and these settings"]  # fmt: skip
    versions = a_groups(results, runs)
    grouped = any(len(v) > 1 for v in versions.values())
    used = []
    for run in runs:
        digest = a_digest(run)
        group = versions[(base_label(run), run["seed"])].index(digest) + 1
        row = f"{run['label']} [A{group}]" if grouped else run["label"]
        used.append({**run, "a_digest": digest, "a_group": group, "row": row})
    used.sort(key=lambda run: (strategy_order(strategy_of(run)), run["a_group"]))  # stable
    if grouped:
        notes.append(a_versions_note(used, versions))
    return used, notes


def a_versions_note(runs: list[dict], versions: dict) -> str:
    """Which (method, seed) has which A versions, where each was trained and which cells use it."""
    lines = [
        "A versions: cells pair only with cells continued from the same A version of their "
        "(method, seed) (same A digest: loss and scores right after A). A1 is the reference "
        "version of each (method, seed); rows are labelled with their group:"
    ]
    for (label, seed), digests in versions.items():
        if len(digests) < 2:
            continue
        parts = []
        for group, digest in enumerate(digests, 1):
            mine = [r for r in runs if r["a_digest"] == digest and base_label(r) == label]
            cpus = sorted({cpu_of(r) for r in mine}) or ["no cell here"]
            cells = ", ".join(strategy_of(r) for r in mine) or "none here"
            parts.append(f"A{group} {digest} (A trained on {', '.join(cpus)}; cells: {cells})")
        lines.append(f"- {label} seed {seed}: " + "; ".join(parts))
    return "\n".join(lines)


def _paired_seeds(by: dict, x: str, y: str) -> tuple[list[int], list[int]]:
    """(seeds where rows x and y pair, seeds refused: the same method on different A versions)."""
    seeds, refused = [], []
    for label, seed in by:
        if label != x or (y, seed) not in by:
            continue
        rx, ry = by[(x, seed)], by[(y, seed)]
        if base_label(rx) == base_label(ry) and a_digest(rx) != a_digest(ry):
            refused.append(seed)
        else:
            seeds.append(seed)
    return sorted(seeds), sorted(refused)


def _suffix(run: dict) -> str:
    return row_of(run)[len(run["label"]) :]


def comparisons(runs: list[dict]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(row x, row y, measures) of every paired difference: the methods against each other
    under each strategy, each strategy against none, each against joint (the upper bound)."""
    suffixes = list(dict.fromkeys(_suffix(r) for r in runs))
    out = [(x + s, y + s, DIFFERENCES) for x, y in COMPARISONS for s in suffixes]
    for run in runs:
        strategy = strategy_of(run)
        if strategy != "none":
            out.append((row_of(run), base_label(run) + _suffix(run), DIFFERENCES))
    strategies = dict.fromkeys(strategy_of(r) for r in runs if strategy_of(r) != "none")
    out += [(f"{x} {st}{s}", f"{y} {st}{s}", DIFFERENCES)
            for st in strategies for x, y in COMPARISONS for s in suffixes]  # fmt: skip
    for run in runs:
        if strategy_of(run) not in ("none", "joint"):
            joint = f"{base_label(run)} joint{_suffix(run)}"
            out.append((row_of(run), joint, ("A after B", "A lost", "B after B")))
    return list(dict.fromkeys(out))


def refused_pairs(runs: list[dict]) -> list[str]:
    """The strategy - none comparisons that exist only across A versions (so are not made)."""
    by_label: dict[tuple[str, int], set[int]] = {}
    for run in runs:
        by_label.setdefault((run["label"], run["seed"]), set()).add(run.get("a_group", 1))
    lines = []
    for label in dict.fromkeys(r["label"] for r in runs if strategy_of(r) != "none"):
        run = next(r for r in runs if r["label"] == label)
        none = base_label(run)
        seeds = sorted(
            seed for (lab, seed), groups in by_label.items()
            if lab == label and (none, seed) in by_label and not groups & by_label[(none, seed)]
        )  # fmt: skip
        if seeds:
            lines.append(f"- {label} - {none}: seeds {', '.join(map(str, seeds))}")
    if not lines:
        return []
    return [
        "Not paired (the two ran from different A versions of the same (method, seed); their "
        "difference would include the difference between the two A versions):",
        *lines,
    ]


def summarise(runs: list[dict], pair: str) -> str:
    """Markdown: per-row means with 95% intervals, then paired differences within one A group."""
    runs = [r for r in runs if pair in r["pairs"]]
    if not runs:
        return f"(no finished {pair} runs)"
    rows = list(dict.fromkeys(row_of(r) for r in runs))
    names = list(MEASURES)
    timed = all("steps" in r["pairs"][pair] for r in runs)  # older results files have no steps
    lines = [
        "| method | seeds | trainable params | " + " | ".join(names)
        + (" | s/step of B |" if timed else " |"),
        "|---|---|---|" + "---|" * (len(names) + timed),
    ]  # fmt: skip
    for row in rows:
        mine = [r for r in runs if row_of(r) == row]
        cells = [fmt_ci([MEASURES[m][1](r, pair) for r in mine]) for m in names]
        if timed:  # one-thread workers sharing the machine: compare within a results file only
            cells.append(fmt_ci([r["pairs"][pair]["seconds"] / r["pairs"][pair]["steps"]
                                 for r in mine], 2))  # fmt: skip
        lines.append(
            f"| {row} | {len(mine)} | {mine[0]['trainable_params']:,} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "| difference (same seeds, same A) | seeds | measure | mean [95% CI] | sign-flip p | "
        "first larger |",
        "|---|---|---|---|---|---|",
    ]
    by = {(row_of(r), r["seed"]): r for r in runs}
    refused = []
    for x, y, measures in comparisons(runs):
        seeds, no = _paired_seeds(by, x, y)
        if no:
            refused.append(f"- {x} - {y}: seeds {', '.join(map(str, no))} (A digests differ)")
        if not seeds:
            continue
        for name in measures:
            f = MEASURES[name][1]
            diffs = [f(by[(x, s)], pair) - f(by[(y, s)], pair) for s in seeds]
            wins = sum(d > 0 for d in diffs)
            lines.append(
                f"| {x} - {y} | {len(seeds)} | {name} | {fmt_ci(diffs)} | "
                f"{sign_flip_p(diffs):.3f} | {wins}/{len(seeds)} |"
            )
    notes = refused_pairs(runs) + (["Refused:", *refused] if refused else [])
    return "\n".join(lines + ([""] + notes if notes else []))


def cell_table(runs: list[dict], pair: str) -> str:
    """Markdown, one row per cell: where it ran, its A version, and A's records gained and lost."""
    runs = [r for r in runs if pair in r["pairs"]]
    lines = [
        "| configuration | seed | A version | CPU of A | CPU of B | A after A | A after B | "
        "B after B | kept | A gained | A lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(runs, key=lambda r: (strategy_order(strategy_of(r)), base_label(r),
                                        r["seed"], r.get("a_group", 1)))  # fmt: skip
    for run in order:
        gained, lost, n = record_changes(run, pair)
        values = [
            MEASURES[m][1](run, pair) for m in ("A after A", "A after B", "B after B", "kept")
        ]
        lines.append(
            f"| {run['label']} | {run['seed']} | A{run.get('a_group', 1)} "
            f"{run.get('a_digest') or a_digest(run)} | {cpu_of(run)} | {cpu_of(run, pair)} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + f" | {gained}/{n} | {lost}/{n} |"
        )
    return "\n".join(lines)


def targets_table(runs: list[dict], pair: str) -> str:
    """Markdown, when some run used a strategy: per configuration, A's accuracies, the records
    of A lost and gained over all seeds, B after B, and whether retention (records lost) and
    plasticity meet the target."""
    runs = [r for r in runs if pair in r["pairs"]]
    if all(strategy_of(r) == "none" for r in runs):
        return ""
    lines = [
        "| configuration | seeds | A after A | A after B | A records lost | A records gained | "
        "A lost (share) | B after B | kept (ratio) | target met | params trained in B | "
        "params added by B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in dict.fromkeys(row_of(r) for r in runs):
        mine = [r for r in runs if row_of(r) == row]
        gained, lost, n = (
            sum(c) for c in zip(*(record_changes(r, pair) for r in mine), strict=True)
        )
        measure = {m: [MEASURES[m][1](r, pair) for r in mine]
                   for m in ("A after A", "A after B", "A lost", "B after B", "kept")}  # fmt: skip
        met = (statistics.mean(measure["A lost"]) <= 1 - TARGET
               and statistics.mean(measure["B after B"]) >= TARGET)  # fmt: skip
        added = max(  # a branch per protected B phase (the same size on every seed)
            sum((r["pairs"][pair].get("continual") or {}).get("branch_params") or [0]) for r in mine
        )
        lines.append(
            f"| {row} | {len(mine)} | {fmt_ci(measure['A after A'])} | "
            f"{fmt_ci(measure['A after B'])} | {lost} of {n} | {gained} of {n} | "
            f"{fmt_ci(measure['A lost'])} | {fmt_ci(measure['B after B'])} | "
            f"{fmt_ci(measure['kept'])} | {'yes' if met else 'no'} | "
            f"{mine[0]['trainable_params']:,} | {added:,} |"
        )
    return "\n".join(lines)


def curve_table(runs: list[dict], pair: str) -> str:
    """Mean accuracy of A over seeds at each watched step of the second task."""
    runs = [r for r in runs if pair in r["pairs"]]
    rows = list(dict.fromkeys(row_of(r) for r in runs))
    if not rows:
        return ""
    steps = sorted({int(p[0]) for r in runs for p in r["pairs"][pair]["curve"]})
    lines = [
        "| method | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for row in rows:
        cells = []
        for step in steps:
            acc = [
                p[1] for r in runs if row_of(r) == row
                for p in r["pairs"][pair]["curve"] if int(p[0]) == step
            ]  # fmt: skip
            cells.append(f"{statistics.mean(acc):.3f}" if acc else "n/a")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict, settings: dict | None) -> str:
    runs, notes = comparable(results, settings)
    base = results.get("base")
    parts = list(notes)
    envs: dict[str, int] = {}
    for run in runs:
        for pair in run["pairs"]:
            env = run["pairs"][pair].get("env") or run.get("env")
            if env:
                key = f"{env['cpu']}, torch {env['torch']}, {env['threads']} thread(s)"
                envs[key] = envs.get(key, 0) + 1
    if envs:
        parts.append("ran on: " + "; ".join(f"{k} ({n} cells)" for k, n in envs.items()))
    if base:
        parts.append(
            "base (zero-shot): "
            + ", ".join(f"{t} {v['acc']:.3f} (NLL {v['nll']:.3f})" for t, v in base.items())
        )
    sequential = [r for r in runs if strategy_of(r) != "joint"]
    joint = [r for r in runs if strategy_of(r) == "joint"]
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
            parts += ["", "Per cell (A's records gained and lost between after A and after B):",
                      cell_table(runs, pair), "", TARGETS_HEADING, targets]  # fmt: skip
    parts.append("definitions: " + "; ".join(f"{k} = {v[0]}" for k, v in MEASURES.items()))
    return "\n".join(parts)

"""Forgetting reports from bundles: `evals.jsonl` + lineage -> `forgetting.ForgettingReport`.

Per bundle:
- rows: `base`, then the versions of the head's lineage that trained a task, oldest first. A
  version that trained nothing (v0001 written by `init-experts`) is not a row: with residual
  compensation the adapter at init computes the base model, which row `base` already stands for.
- columns: the tasks in the order they were first trained.
- cells: each task's headline metric (the metric on its `headline: true` evaluation lines, the
  latest when it changed), or `metric` for every task. A cell evaluated twice takes the later
  line; a cell never evaluated stays missing (n/a), never 0.

Each trained version's continual strategy (`none`, `replay 0.1, 50 per task`) is reported
with it (`strategies`), read from the version's continual.json.

Notes (plain strings, no record text) say which command fills a missing cell, and warn when the
cells of one matrix come from different scoring modes or headline metrics.

Lines with a `step` (points of a forgetting curve, written by `train`/`continue --watch`) never
fill a cell nor choose a column's metric: they become the report's `curves` (one per version and
watched task, see `forgetting.training_curves`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medqwen_cli.bundle import BASE_VERSION, Bundle
from medqwen_cli.continual import version_strategy
from medqwen_cli.errors import EvaluationError
from medqwen_cli.forgetting import ForgettingReport, forgetting_report
from medqwen_cli.settings import Settings


@dataclass
class BundleRun:
    """One bundle's report, with the path it came from and notes for the reader."""

    name: str
    path: str
    report: ForgettingReport
    notes: list[str] = field(default_factory=list)
    strategies: dict[str, str] = field(default_factory=dict)  # version -> none | replay F ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "notes": self.notes, "strategies": self.strategies,
            **self.report.model_dump(mode="json"),
        }  # fmt: skip


def forgetting_for_bundles(
    bundles: Sequence[Bundle | str | os.PathLike[str] | None],
    *,
    metric: str | None = None,
    settings: Settings | None = None,
) -> list[BundleRun]:
    """One report per bundle, side by side, named by their directories. A `None` bundle is the
    default one of `settings` (default: `Settings.from_env()`), found as `Bundle.open` finds it."""
    settings = settings if settings is not None else Settings.from_env()
    opened = [b if isinstance(b, Bundle) else Bundle.open(b, settings) for b in bundles]
    names = run_names([b.root for b in opened])
    if len(set(names)) != len(names):
        raise EvaluationError(
            "the same bundle is listed twice", "list each bundle once to compare runs"
        )
    inputs = [(b, _records(b), _lineage(b)) for b in opened]  # every problem before any work
    if metric is not None:
        _check_metric(metric, [records for _, records, _ in inputs])
    runs = []
    for name, (bundle, records, lineage) in zip(names, inputs, strict=True):
        cells = [r for r in records if r.get("step") is None]  # curve points are not cells
        columns, notes = _column_metrics(cells, _tasks(lineage), metric)
        if metric is not None:  # --metric also picks the curves' metric, trained task or not
            columns |= {r["task"]: metric for r in records if r.get("step") is not None}
        report = forgetting_report(records, lineage, name=name, metric=columns, base=BASE_VERSION)
        notes += _scoring_notes(cells, report) + _missing_notes(bundle, report)
        strategies = {version: version_strategy(bundle, version) for version, _ in lineage}
        runs.append(BundleRun(name, str(bundle.root), report, notes, strategies))
    return runs


def run_names(paths: Sequence[Path]) -> list[str]:
    """Directory names, with as many parent parts as it takes to tell them apart."""
    for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same bundle twice


def _tasks(lineage: list[tuple[str, list[str]]]) -> list[str]:
    return list(dict.fromkeys(t for _, trained in lineage for t in trained))


def _records(bundle: Bundle) -> list[dict[str, Any]]:
    records = bundle.read_evals()
    if not records:
        raise EvaluationError(
            f"bundle {bundle.root} has no evaluations (no lines in evals.jsonl)",
            f"run `medqwen evaluate {bundle.root}` after each version, and "
            f"`medqwen evaluate {bundle.root} --base-only` for the zero-shot row",
        )
    return records


def _lineage(bundle: Bundle) -> list[tuple[str, list[str]]]:
    lineage = [(e.id, list(e.tasks)) for e in bundle.lineage() if e.tasks]
    if not lineage:
        raise EvaluationError(
            f"bundle {bundle.root} has no version that trained a task (only the init version)",
            f"train one first: `medqwen train {bundle.root}` or "
            f"`medqwen continue {bundle.root} --task NAME`",
        )
    return lineage


def _check_metric(metric: str, record_sets: list[list[dict[str, Any]]]) -> None:
    recorded = sorted({r.get("metric") for records in record_sets for r in records} - {None})
    if metric not in recorded:
        raise EvaluationError(
            f"no evaluation records metric {metric!r}",
            f"metrics recorded: {', '.join(recorded)}; leave --metric out to use each task's "
            "headline metric",
        )


def _column_metrics(
    records: list[dict[str, Any]], tasks: list[str], metric: str | None
) -> tuple[dict[str, str | None], list[str]]:
    """task -> metric filling its column, and notes on tasks whose headline changed or is unknown."""
    if metric is not None:
        return {t: metric for t in tasks}, []
    columns: dict[str, str | None] = {}
    notes = []
    for task in tasks:
        mine = [r for r in records if r.get("task") == task]
        flagged = list(dict.fromkeys(r["metric"] for r in mine if r.get("headline")))
        if flagged:
            columns[task] = flagged[-1]
            if len(flagged) > 1:
                notes.append(
                    f"task {task}: the headline metric changed over evaluations "
                    f"({', '.join(flagged)}); using {flagged[-1]} (pass --metric to choose)"
                )
        else:
            names = sorted({r.get("metric") for r in mine} - {None})
            columns[task] = names[0] if len(names) == 1 else None
            if not names:
                notes.append(f"task {task}: never evaluated in this bundle")
            elif len(names) > 1:
                notes.append(
                    f"task {task}: no headline line and several metrics ({', '.join(names)}); "
                    "pass --metric"
                )
    return columns, notes


def _scoring_notes(records: list[dict[str, Any]], report: ForgettingReport) -> list[str]:
    m = report.matrix
    used = {
        r.get("scoring")
        for r in records
        if r.get("version") in m.rows and r.get("task") in m.metrics
        and r.get("metric") == m.metrics[r["task"]] and r.get("scoring")
    }  # fmt: skip
    if len(used) > 1:
        return [
            f"{report.name}: cells come from different scoring modes ({', '.join(sorted(used))}); "
            "re-evaluate with one --scoring to compare like with like"
        ]
    return []


def _missing_notes(bundle: Bundle, report: ForgettingReport) -> list[str]:
    m = report.matrix
    notes = []
    for row, version in enumerate(m.rows):
        missing = [t for t in m.tasks if m.cell(row, t) is None]
        if not missing:
            continue
        target = "--base-only" if version == BASE_VERSION else f"--version {version}"
        tasks = " ".join(f"--task {t}" for t in missing)
        notes.append(
            f"{report.name}: missing R[{version}][{', '.join(missing)}]; fill with "
            f"`medqwen evaluate {bundle.root} {target} {tasks}`"
        )
    return notes

"""Continual-learning figures from an accuracy matrix. Pure functions on plain data, no I/O.

The accuracy matrix R has one row per model state and one column per task:

    row 0      b     the base model (zero-shot), version id `base` in the records
    row i>=1   R[i]  the adapter after the i-th version of the lineage
    column j         tasks in the order they were first trained
    R[i][j]          the task's headline score on the evaluation split, or None when not evaluated

t(j) is the row of the version that first trained task j and T the last row. With one task per
version, t(j) = j and this is the usual notation of Lopez-Paz & Ranzato (2017) and Chaudhry et al.
(2018):

    ACC        = mean_j R[T][j]                                   over every task trained
    BWT        = mean_{j: t(j)<T} (R[T][j] - R[t(j)][j])          < 0 means forgetting
    FWT        = mean_{j: t(j)>1} (R[t(j)-1][j] - b[j])           > 0 means earlier tasks helped
    Forgetting = mean_{j: t(j)<T} (max_{t(j)<=l<T} R[l][j] - R[T][j])
    drop_j     = R[t(j)][j] - R[T][j],   relative drop_j = drop_j / R[t(j)][j]

Forgetting takes the best score since task j was trained. Chaudhry's max over every l < T also
includes versions before task j was trained, whose score measures transfer, not something that
could be forgotten; both agree whenever a task's score before training is not above its later
best, and this one needs no evaluation of tasks before they are trained.

A figure that needs a missing cell is None, and its `reason` names the cells; a missing cell is
never read as 0. Every figure carries its definition, for labels in tables, CSV, JSON and plots.

Forgetting curves (the MedQwen paper's Figure 5) come from records that carry a `step`: written
by `train`/`continue --watch A`, they score task A on the model in training at step k of the
version v that trains task B (k = 0, N, 2N, ..., last). They are never cells of R (the matrix
skips them); `training_curves` collects them, one curve per (v, A):

    curve_v(A) = [(k, score of A after k optimizer steps of v's training) for each scored k]

Its first point (k = 0) is the parent's score, its last the version's own: R[v-1][A] and R[v][A]
where those cells were evaluated with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from medqwen_cli.bundle.manifest import BASE_VERSION
from medqwen_cli.errors import EvaluationError

ACC_DEF = "ACC = mean_j R[T][j]: mean final score over the tasks trained"
BWT_DEF = "BWT = mean_{j<T} (R[T][j] - R[j][j]): final minus just-trained score (<0: forgetting)"
FWT_DEF = "FWT = mean_{j>1} (R[j-1][j] - b[j]): score before training minus base (>0: transfer)"
FORGETTING_DEF = (
    "Forgetting = mean_{j<T} (max_{j<=l<T} R[l][j] - R[T][j]): best minus final score (Chaudhry)"
)
TASK_FORGETTING_DEF = "f_j = max_{j<=l<T} R[l][j] - R[T][j]: best score since trained minus final"
DROP_DEF = "drop_j = R[j][j] - R[T][j]: score right after training minus final (>0: forgot)"
RELATIVE_DROP_DEF = (
    "rel_drop_j = (R[j][j] - R[T][j]) / R[j][j]: drop as a share of the trained score"
)
CURVE_DEF = "curve: score of task A after k optimizer steps of the version training task B"

Records = Iterable[Mapping[str, Any]]
Lineage = Sequence[tuple[str, str | Sequence[str]]]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Figure(_Frozen):
    """One reported number with its definition; `value` None means `reason` says why."""

    name: str
    value: float | None
    definition: str
    reason: str | None = None


class AccuracyMatrix(_Frozen):
    rows: list[str]  # "base" label first, then version ids in lineage order
    tasks: list[str]  # columns, in the order first trained
    metrics: dict[str, str | None]  # task -> metric used for its column (None: no records)
    trained_row: dict[str, int]  # task -> row index of the version that first trained it
    values: list[list[float | None]]  # values[row][column]
    ignored_records: int = 0  # records for versions/tasks/metrics outside the matrix

    def cell(self, row: int, task: str) -> float | None:
        return self.values[row][self.tasks.index(task)]

    def cell_name(self, row: int, task: str) -> str:
        return f"R[{self.rows[row]}][{task}]"


class TaskForgetting(_Frozen):
    task: str
    metric: str | None
    trained_in: str  # version id
    after_training: float | None  # R[t(j)][j]
    final: float | None  # R[T][j]
    drop: Figure
    relative_drop: Figure
    forgetting: Figure


class CurvePoint(_Frozen):
    step: int  # optimizer steps of the version's training done
    value: float | None
    n: int | None = None  # records scored


class TrainingCurve(_Frozen):
    """Task `task` scored while version `version` trained `trained`, every `eval_every` steps."""

    version: str
    trained: list[str]  # the task(s) the version trained (B)
    task: str  # the watched task (A)
    metric: str
    eval_every: int | None
    steps: int | None  # optimizer steps of the version's training
    points: list[CurvePoint]
    definition: str


class ForgettingReport(_Frozen):
    """Everything one run reports (several side by side: one per run, in a list)."""

    name: str
    matrix: AccuracyMatrix
    acc: Figure
    bwt: Figure
    fwt: Figure
    forgetting: Figure
    per_task: list[TaskForgetting]
    curves: list[TrainingCurve] = []

    def figures(self) -> list[Figure]:
        return [self.acc, self.bwt, self.fwt, self.forgetting]

    def figure_rows(self) -> list[dict[str, Any]]:
        """Flat rows (run, task, figure, value, definition, reason) for CSV and tables."""
        rows = [{"run": self.name, "task": None, **f.model_dump()} for f in self.figures()]
        for t in self.per_task:
            for f in (t.drop, t.relative_drop, t.forgetting):
                rows.append({"run": self.name, "task": t.task, **f.model_dump()})
        return rows


def _tasks_of(entry: str | Sequence[str]) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def accuracy_matrix(
    records: Records,
    lineage: Lineage,
    *,
    metric: str | Mapping[str, str] | None = None,
    base: str = BASE_VERSION,
) -> AccuracyMatrix:
    """Build R from evaluation records `{"version", "task", "metric", "value"}`.

    `lineage` lists (version id, task or tasks trained in it) in order. `metric` picks the column
    metric: one name for every task, a task -> name mapping, or None when each task has records
    for one metric only. When a cell was evaluated twice, the later record wins.
    """
    rows, tasks, trained_row = [base], [], {}
    for i, (version, trained) in enumerate(lineage, start=1):
        if version in rows:
            raise EvaluationError(
                f"version {version!r} appears twice in the lineage (or is the base id)",
                hint="pass each version once, oldest first; the base row is implied",
            )
        rows.append(version)
        for task in _tasks_of(trained):
            if task not in trained_row:
                trained_row[task] = i
                tasks.append(task)
    if len(rows) < 2:
        raise EvaluationError("the lineage has no trained version", hint="train a version first")

    records = [r for r in records if r.get("step") is None]  # curve points are not cells
    for i, rec in enumerate(records):
        missing = {"version", "task", "metric", "value"} - set(rec)
        if missing:
            raise EvaluationError(
                f"evaluation record {i} lacks {sorted(missing)}: {dict(rec)!r}",
                hint='each record needs "version", "task", "metric" and "value"',
            )
    metrics = _column_metrics(records, tasks, metric)
    row_of = {v: r for r, v in enumerate(rows)}
    col_of = {t: c for c, t in enumerate(tasks)}
    values: list[list[float | None]] = [[None] * len(tasks) for _ in rows]
    ignored = 0
    for rec in records:
        r, c = row_of.get(rec["version"]), col_of.get(rec["task"])
        if r is None or c is None or rec["metric"] != metrics[rec["task"]]:
            ignored += 1
            continue
        values[r][c] = _number(rec["value"])
    return AccuracyMatrix(
        rows=rows,
        tasks=tasks,
        metrics=metrics,
        trained_row=trained_row,
        values=values,
        ignored_records=ignored,
    )


def training_curves(
    records: Records, lineage: Lineage, *, metric: str | Mapping[str, str] | None = None
) -> list[TrainingCurve]:
    """The forgetting curves of the lineage's versions, from the records with a `step`.

    Per (version, watched task), in lineage order: the points of `metric` (one name, or a
    task -> name mapping; a task it does not name, or None, takes the `headline: true` lines),
    sorted by step; a step scored twice takes the later record.
    """
    trained = {version: _tasks_of(tasks) for version, tasks in lineage}
    groups: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
    for rec in records:
        if rec.get("step") is None or rec.get("version") not in trained or "task" not in rec:
            continue
        want = metric if isinstance(metric, str) else (metric or {}).get(rec["task"])
        if rec.get("metric") != want if want else not rec.get("headline"):
            continue
        groups.setdefault((rec["version"], rec["task"]), {})[int(rec["step"])] = rec
    order = list(trained)
    curves = []
    for (version, task), by_step in sorted(groups.items(), key=lambda kv: order.index(kv[0][0])):
        last = by_step[max(by_step)]
        every = last.get("eval_every")
        on = ", ".join(trained[version]) or "nothing"
        definition = f"score of {task} while training {version} on {on}" + (
            f", every {every} steps" if every else ""
        )
        curves.append(
            TrainingCurve(
                version=version, trained=trained[version], task=task, metric=last["metric"],
                eval_every=every, steps=last.get("steps"), definition=definition,
                points=[
                    CurvePoint(step=k, value=_number(r.get("value")), n=r.get("n"))
                    for k, r in sorted(by_step.items())
                ],
            )
        )  # fmt: skip
    return curves


def _column_metrics(
    records: list[Mapping[str, Any]], tasks: list[str], metric: str | Mapping[str, str] | None
) -> dict[str, str | None]:
    if isinstance(metric, str):
        return {t: metric for t in tasks}
    if metric is not None:
        absent = [t for t in tasks if t not in metric]
        if absent:
            raise EvaluationError(
                f"no metric given for task(s) {absent}",
                hint="give a metric for every trained task, e.g. its headline metric",
            )
        return {t: metric[t] for t in tasks}
    found: dict[str, set[str]] = {t: set() for t in tasks}
    for rec in records:
        if rec["task"] in found:
            found[rec["task"]].add(rec["metric"])
    several = {t: sorted(m) for t, m in found.items() if len(m) > 1}
    if several:
        raise EvaluationError(
            f"several metrics recorded for task(s) {several}; which one fills the matrix?",
            hint="pass metric=NAME or a task -> metric mapping (e.g. each task's headline metric)",
        )
    return {t: next(iter(m)) if m else None for t, m in found.items()}


def _mean(terms: list[tuple[float | None, list[str]]], name: str, definition: str) -> Figure:
    """Mean of (value, cells it needs); None naming the missing cells when any term is None."""
    missing = [cell for value, cells in terms if value is None for cell in cells]
    if missing:
        return Figure(
            name=name, value=None, definition=definition, reason=f"missing {', '.join(missing)}"
        )
    return Figure(name=name, value=sum(v for v, _ in terms) / len(terms), definition=definition)


def _difference(
    m: AccuracyMatrix, plus: tuple[int, str], minus: tuple[int, str]
) -> tuple[float | None, list[str]]:
    a, b = m.cell(*plus), m.cell(*minus)
    missing = [m.cell_name(*p) for p, v in ((plus, a), (minus, b)) if v is None]
    return (None if missing else a - b), missing


def _task_forgetting(m: AccuracyMatrix, task: str) -> tuple[float | None, list[str], str | None]:
    """(f_j, missing cells, reason it is undefined) for one task."""
    last, t = len(m.rows) - 1, m.trained_row[task]
    if t == last:
        return None, [], "trained in the last version: nothing to forget yet"
    cells = [(row, m.cell(row, task)) for row in range(t, last + 1)]
    missing = [m.cell_name(row, task) for row, v in cells if v is None]
    if missing:
        return None, missing, None
    best = max(v for row, v in cells[:-1])
    return best - cells[-1][1], [], None


def forgetting_report(
    records: Records,
    lineage: Lineage,
    *,
    name: str = "run",
    metric: str | Mapping[str, str] | None = None,
    base: str = BASE_VERSION,
) -> ForgettingReport:
    """ACC, BWT, FWT, forgetting and per-task drops of one run (definitions in the docstring),
    and its forgetting curves (records with a `step`, which never fill R)."""
    records = list(records)
    m = accuracy_matrix(records, lineage, metric=metric, base=base)
    last = len(m.rows) - 1
    tasks, t = m.tasks, m.trained_row

    acc = _mean(
        [
            (m.cell(last, j), [m.cell_name(last, j)] if m.cell(last, j) is None else [])
            for j in tasks
        ],
        "ACC",
        ACC_DEF,
    )
    earlier = [j for j in tasks if t[j] < last]
    later = [j for j in tasks if t[j] > 1]
    if earlier:
        bwt = _mean([_difference(m, (last, j), (t[j], j)) for j in earlier], "BWT", BWT_DEF)
        per = [_task_forgetting(m, j) for j in earlier]
        forgetting = _mean([(f, cells) for f, cells, _ in per], "Forgetting", FORGETTING_DEF)
    else:
        why = "needs a task trained before the last version"
        bwt = Figure(name="BWT", value=None, definition=BWT_DEF, reason=why)
        forgetting = Figure(name="Forgetting", value=None, definition=FORGETTING_DEF, reason=why)
    if later:
        fwt = _mean([_difference(m, (t[j] - 1, j), (0, j)) for j in later], "FWT", FWT_DEF)
    else:
        fwt = Figure(
            name="FWT",
            value=None,
            definition=FWT_DEF,
            reason="needs a task trained after the first version",
        )
    per_task = [_per_task(m, j) for j in tasks]
    curves = training_curves(records, lineage, metric=metric)
    return ForgettingReport(
        name=name, matrix=m, acc=acc, bwt=bwt, fwt=fwt, forgetting=forgetting, per_task=per_task,
        curves=curves,
    )  # fmt: skip


def _per_task(m: AccuracyMatrix, task: str) -> TaskForgetting:
    last, t = len(m.rows) - 1, m.trained_row[task]
    after, final = m.cell(t, task), m.cell(last, task)
    drop, missing = _difference(m, (t, task), (last, task))
    why_missing = f"missing {', '.join(missing)}" if missing else None
    if drop is None:
        relative, why_relative = None, why_missing
    elif after == 0:
        relative, why_relative = None, "score right after training is 0"
    else:
        relative, why_relative = drop / after, None
    f, f_missing, f_reason = _task_forgetting(m, task)
    return TaskForgetting(
        task=task,
        metric=m.metrics[task],
        trained_in=m.rows[t],
        after_training=after,
        final=final,
        drop=Figure(name="drop", value=drop, definition=DROP_DEF, reason=why_missing),
        relative_drop=Figure(
            name="relative_drop", value=relative, definition=RELATIVE_DROP_DEF, reason=why_relative
        ),
        forgetting=Figure(
            name="forgetting",
            value=f,
            definition=TASK_FORGETTING_DEF,
            reason=f_reason or (f"missing {', '.join(f_missing)}" if f_missing else None),
        ),
    )

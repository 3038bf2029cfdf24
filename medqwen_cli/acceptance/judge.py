"""Judge one version against its criteria: pure functions on evaluation lines, no I/O.

Each criterion of `AcceptanceConfig` that applies to a task of the version becomes one `Check`:
the threshold, the value measured from the version's evaluation lines (evals.jsonl), and whether
it passed. A criterion whose value was not measured (the task has no eval split, the run used
`--no-eval`, a metric was never recorded) fails: a criterion nobody could check is not met. The
version passes when every check passes; with no check at all it passes (nothing was asked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from medqwen_cli.acceptance.schema import AcceptanceConfig, NewTaskCriteria, TaskCriteria

KEPT_DEF = "kept = R[v][j] / R[t(j)][j]: score now over score right after it was trained"
DROP_DEF = "drop = R[t(j)][j] - R[v][j]: score right after it was trained minus score now"
LOST_DEF = "records lost = records right after it was trained and wrong now"
NET_DEF = (
    "records lost = round(m then x n) - round(m now x n), net (scored without per-record "
    "outcomes: a record lost and another gained cancel out)"
)


@dataclass(frozen=True)
class Check:
    task: str
    scope: str  # "new task" | "earlier task" | "task <name>"
    criterion: str  # min_score | min_metric | min_kept | max_drop
    metric: str | None
    threshold: float
    measured: float | None
    passed: bool
    detail: str  # how `measured` was obtained, or why it is missing

    def line(self) -> str:
        """One line: `ct min_score headline_mean 0.2000 < 0.5000 (new task)`."""
        sign = ">=" if self.criterion.startswith("min") else "<="
        got = "not measured" if self.measured is None else f"{self.measured:.4g}"
        verb = "passed" if self.passed else "failed"
        return (
            f"{self.task} {self.criterion} {self.metric or ''}: {got}, needs {sign} "
            f"{self.threshold:g} ({self.scope}; {verb})"
        ).replace("  ", " ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Score(NamedTuple):
    value: float | None
    n: int | None
    records: str | None = None  # digest of the records scored (evaluation/outcomes.py)
    outcomes: str | None = None  # which of them were right, a bitmap


Scores = dict[tuple[str, str, str], Score]
NONE = Score(None, None)


def latest_scores(
    records: Iterable[Mapping[str, Any]],
) -> tuple[Scores, dict[tuple[str, str], str]]:
    """((version, task, metric) -> Score of the latest line, (version, task) -> headline
    metric), from evaluation lines; curve points (lines with a `step`) are left out. A task of
    one record type names its metrics bare (`accuracy`); they are found as `type.metric` too."""
    scores: Scores = {}
    headline: dict[tuple[str, str], str] = {}
    for r in records:
        if r.get("step") is not None or not {"version", "task", "metric"} <= set(r):
            continue
        value = r.get("value")
        number = (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
        score = Score(number, r.get("n"), r.get("records"), r.get("outcomes"))
        scores[(r["version"], r["task"], r["metric"])] = score
        kind = r.get("type")
        if kind and kind != "mixed" and "." not in r["metric"]:
            scores[(r["version"], r["task"], f"{kind}.{r['metric']}")] = score
        if r.get("headline"):
            headline[(r["version"], r["task"])] = r["metric"]
    return scores, headline


def judge(
    criteria: AcceptanceConfig,
    records: Iterable[Mapping[str, Any]],
    lineage: Sequence[tuple[str, Sequence[str]]],
) -> list[Check]:
    """The checks of the last version of `lineage` ((version id, tasks trained) oldest first)."""
    version, new = lineage[-1][0], list(lineage[-1][1])
    trained_in: dict[str, str] = {}
    for vid, tasks in lineage:
        for task in tasks:
            trained_in.setdefault(task, vid)
    scores, headline = latest_scores(records)
    checks: list[Check] = []
    for task, first in trained_in.items():
        is_new = first == version or task in new
        scoped: list[tuple[str, NewTaskCriteria | TaskCriteria | None]] = [
            ("new task" if is_new else "earlier task",
             criteria.new_task if is_new else criteria.earlier_tasks),
            (f"task {task}", criteria.tasks.get(task)),
        ]  # fmt: skip
        for scope, c in scoped:
            if c is not None:
                checks += _task_checks(c, scope, task, version, first, is_new, scores, headline)
    return checks


def _task_checks(
    c: NewTaskCriteria | TaskCriteria,
    scope: str,
    task: str,
    version: str,
    first: str,
    is_new: bool,
    scores: Scores,
    headline: dict[tuple[str, str], str],
) -> list[Check]:
    metric = headline.get((version, task))
    now, n = scores.get((version, task, metric), NONE)[:2] if metric else (None, None)
    missing = f"no evaluation of {task} after {version}"
    where = f"{version} on {task}, {n} records" if n else f"{version} on {task}"
    out = []
    if c.min_score is not None:
        out.append(_check(task, scope, "min_score", metric, c.min_score, now, where, missing))
    for name, least in c.min_metric.items():
        value, count = scores.get((version, task, name), NONE)[:2]
        why = f"{version} on {task}, {count} records" if count else where
        out.append(_check(task, scope, "min_metric", name, least, value, why,
                          f"no {name} recorded for {task} after {version}"))  # fmt: skip
    if is_new or not isinstance(c, TaskCriteria):
        return out
    for name, most in c.max_records_lost.items():
        out.append(_records_lost(task, scope, name, most, scores, version, first))
    if c.min_kept is None and c.max_drop is None:
        return out
    then = scores.get((first, task, metric), NONE).value if metric else None
    pair = f"{version} vs {first}, where {task} was trained"
    gone = missing if now is None else f"no evaluation of {task} after {first}"
    if c.min_kept is not None:
        kept = None if now is None or then is None or then <= 0 else now / then
        why = gone if then is None or now is None else "score right after training was 0"
        out.append(_check(task, scope, "min_kept", metric, c.min_kept, kept,
                          f"{KEPT_DEF}; {pair}", why))  # fmt: skip
    if c.max_drop is not None:
        drop = None if now is None or then is None else then - now
        out.append(_check(task, scope, "max_drop", metric, c.max_drop, drop,
                          f"{DROP_DEF}; {pair}", gone))  # fmt: skip
    return out


def _records_lost(
    task: str, scope: str, metric: str, most: int, scores: Scores, version: str, first: str
) -> Check:
    """Records of `task` answered right after `first` and wrong after `version`, counted from
    both versions' per-record outcomes on the same records; from the scores (net) when either
    line was written without outcomes."""
    from medqwen_cli.evaluation.outcomes import lost_and_gained, unpack  # recipe imports us

    then, now = scores.get((first, task, metric), NONE), scores.get((version, task, metric), NONE)
    pair = f"{version} vs {first}, {now.n} records"
    if then.value is None or now.value is None:
        why = f"no {metric} of {task} after {first if then.value is None else version}"
        return Check(task, scope, "max_records_lost", metric, most, None, False, why)
    if then.records and now.records and then.records != now.records or then.n != now.n:
        why = (f"{metric} of {task} scored on {then.n} records after {first} and {now.n} after "
               f"{version}: not the same records")  # fmt: skip
        return Check(task, scope, "max_records_lost", metric, most, None, False, why)
    if then.outcomes and now.outcomes and then.records and then.n:
        try:
            lost, gained = lost_and_gained(
                unpack(then.outcomes, then.n), unpack(now.outcomes, now.n)
            )
        except ValueError as exc:
            return Check(task, scope, "max_records_lost", metric, most, None, False, str(exc))
        how = f"{LOST_DEF}; {pair}; {gained} gained"
        return _check(task, scope, "max_records_lost", metric, most, float(lost), how, "")
    if not then.n:
        return Check(task, scope, "max_records_lost", metric, most, None, False,
                     f"{metric} of {task} has no record count")  # fmt: skip
    lost = round(then.value * then.n) - round(now.value * now.n)
    return _check(task, scope, "max_records_lost", metric, most, float(lost),
                  f"{NET_DEF}; {pair}", "")  # fmt: skip


def _check(
    task: str,
    scope: str,
    criterion: str,
    metric: str | None,
    threshold: float,
    measured: float | None,
    how: str,
    missing: str,
) -> Check:
    if measured is None:
        return Check(task, scope, criterion, metric, threshold, None, False, missing)
    ok = measured <= threshold if criterion.startswith("max") else measured >= threshold
    return Check(task, scope, criterion, metric, threshold, measured, ok, how)

"""Acceptance criteria: a version that misses the criteria fixed in its recipe is kept but does
not become the bundle's default version until a person accepts it.

schema   the recipe's `acceptance:` section (pydantic, documented in docs/recipes.md)
judge    the checks of one version against its criteria, from its evaluation lines
log      acceptance.jsonl: verdicts and overrides, append-only and hash-chained; each version's
         status and the bundle's default version

`continue` calls `judge_run` after it scored the new version; `medqwen accept` calls
`record_override`; `Bundle.head` is `default_version`. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

from medqwen_cli.acceptance.judge import Check, judge, latest_scores
from medqwen_cli.acceptance.log import (
    ACCEPTANCE_FILE,
    ACCEPTED,
    NO_CRITERIA,
    OVERRIDDEN,
    REJECTED,
    append_line,
    default_version,
    read_log,
    record_override,
    statuses,
    version_status,
)
from medqwen_cli.acceptance.schema import AcceptanceConfig, NewTaskCriteria, TaskCriteria

# `continue` exits with this code when the version it wrote failed its criteria (docs/cli.md).
EXIT_NOT_ACCEPTED = 3

__all__ = [
    "ACCEPTANCE_FILE",
    "ACCEPTED",
    "EXIT_NOT_ACCEPTED",
    "NO_CRITERIA",
    "OVERRIDDEN",
    "REJECTED",
    "AcceptanceConfig",
    "Check",
    "NewTaskCriteria",
    "TaskCriteria",
    "acceptance_fields",
    "append_line",
    "default_version",
    "judge",
    "judge_run",
    "latest_scores",
    "read_log",
    "record_override",
    "statuses",
    "version_status",
]


def judge_run(plan: Any, bundle: Any, version: str, *, main: bool = True) -> dict[str, Any] | None:
    """Judge `version` (just written by a run of `plan`) against its recipe's criteria, from the
    evaluation lines the run appended, and append the verdict to acceptance.jsonl. None when no
    criterion is set, on a process other than the main one, or without a version."""
    criteria: AcceptanceConfig = plan.recipe.acceptance
    if not main or not version or not criteria.in_force():
        return None
    lineage = [(e.id, list(e.tasks)) for e in bundle.lineage(version) if e.tasks]
    checks = judge(criteria, bundle.read_evals(), lineage)
    line = append_line(
        bundle.root,
        {
            "kind": "verdict", "version": version, "version_sha256": bundle.entry(version).sha256,
            "passed": all(c.passed for c in checks), "checks": [c.to_dict() for c in checks],
            "criteria": criteria.model_dump(mode="json", exclude={"notes"}),
        },
        f"{plan.kind} acceptance",
    )  # fmt: skip
    return {**line, "default_version": default_version(bundle)}


def failure_line(verdict: dict[str, Any]) -> str:
    """The one line a failed verdict prints: the version, then each failed check with numbers."""
    failed = [Check(**c).line() for c in verdict["checks"] if not c["passed"]]
    return (
        f"version {verdict['version']} is not accepted: " + "; ".join(failed)
        + f"; the default version stays {verdict['default_version']}"
    )  # fmt: skip


def acceptance_fields(bundle: Any, version: str) -> dict[str, Any]:
    """What `inspect` adds: the version's acceptance status (and its failed checks, or who
    overrode them) and the bundle's default version."""
    state = version_status(bundle, version)
    status = state["status"]
    if status in (REJECTED, OVERRIDDEN):
        failed = [Check(**c).line() for c in state["verdict"]["checks"] if not c["passed"]]
        status += ": " + "; ".join(failed)
    if state["overrides"]:
        last = state["overrides"][-1]
        status += f" (accepted by {last['by']}: {last['reason']})"
    return {"acceptance": status, "default_version": default_version(bundle)}

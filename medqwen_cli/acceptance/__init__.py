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


def judge_run(
    recipe: Any, bundle: Any, version: str, *, main: bool | None = None
) -> dict[str, Any] | None:
    """Judge `version`, just written (or completed) by a `continue` run with `recipe`, against the
    recipe's criteria on the evaluation lines the run appended, and append the verdict to
    acceptance.jsonl. None when no criterion is set, without a version, or on a process other
    than the main one (`main`; None: asks accelerate). A verdict equal to the version's latest
    (the same command run again, nothing new scored) is returned, not appended again. The
    result adds the version's `status` (an override may follow a failed verdict) and the
    bundle's `default_version`."""
    criteria: AcceptanceConfig = recipe.acceptance
    if not version or not criteria.in_force():
        return None
    if main is None:
        from accelerate import PartialState

        main = PartialState().is_main_process
    if not main:
        return None
    lineage = [(e.id, list(e.tasks)) for e in bundle.lineage(version) if e.tasks]
    checks = [c.to_dict() for c in judge(criteria, bundle.read_evals(), lineage)]
    line = {
        "kind": "verdict", "version": version, "version_sha256": bundle.entry(version).sha256,
        "passed": all(c["passed"] for c in checks), "checks": checks,
        "criteria": criteria.model_dump(mode="json", exclude={"notes"}),
    }  # fmt: skip
    latest = version_status(bundle, version)["verdict"]
    same = latest is not None and all(latest.get(k) == v for k, v in line.items())
    stamped = latest if same else append_line(bundle.root, line, "continue acceptance")
    status = version_status(bundle, version)["status"]  # an override may follow the verdict
    return {**stamped, "status": status, "default_version": default_version(bundle)}


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

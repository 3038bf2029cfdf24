"""acceptance.jsonl: the bundle's append-only record of verdicts and human overrides.

A version is immutable once published (its files are listed with their sha256 in version.json),
and its scores only exist after it is published: `continue` evaluates the version it just wrote.
So a verdict cannot live inside the version without rewriting it. It is a later, separate fact
about the version, like an evaluation, and a human override comes later still. Both are lines
of `<bundle>/acceptance.jsonl`, appended under the bundle's lock and fsynced:

    {"kind": "verdict",  "version", "version_sha256", "passed", "checks": [...], "criteria", ...}
    {"kind": "override", "version", "version_sha256", "by", "reason", ...}

They are kept apart from evals.jsonl, whose every line is a score the accuracy matrix reads.
Each line carries `prev`, the sha256 of the line before it (None for the first), and
`version_sha256`, the checksum of the version's version.json: an edited, removed or reordered
line breaks the chain, which `read_log` reports (the report shows it, `inspect` too).

A version's status: `no criteria` (no verdict: nothing was asked of it), `accepted` (its latest
verdict passed), `accepted by override` (a failed verdict, then an override) or `not accepted`.
Only the last keeps a version from being the bundle's default (`default_version`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from medqwen_cli import __version__
from medqwen_cli.bundle.lock import bundle_lock
from medqwen_cli.bundle.manifest import now
from medqwen_cli.errors import BundleError

ACCEPTANCE_FILE = "acceptance.jsonl"
NO_CRITERIA, ACCEPTED, OVERRIDDEN, REJECTED = (
    "no criteria", "accepted", "accepted by override", "not accepted",
)  # fmt: skip


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def read_log(root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(the lines of `root`'s acceptance.jsonl, problems with its chain); none when absent."""
    file = Path(root) / ACCEPTANCE_FILE
    if not file.is_file():
        return [], []
    lines, problems, prev = [], [], None
    for number, text in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            problems.append(f"{ACCEPTANCE_FILE}:{number} is not valid JSON")
            prev = _digest(text)
            continue
        if line.get("prev") != prev:
            problems.append(
                f"{ACCEPTANCE_FILE}:{number} does not follow the line before it (a line was "
                "edited, removed or reordered)"
            )
        lines.append(line)
        prev = _digest(text)
    return lines, problems


def append_line(root: Path, line: dict[str, Any], command: str) -> dict[str, Any]:
    """Append `line` (stamped with time, medqwen version and the chain's `prev`) and fsync."""
    file = Path(root) / ACCEPTANCE_FILE
    with bundle_lock(Path(root), command):
        texts = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
        texts = [t for t in texts if t.strip()]
        stamped = {
            "time": now(), "medqwen_version": __version__, **line,
            "prev": _digest(texts[-1]) if texts else None,
        }  # fmt: skip
        with open(file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(stamped, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return stamped


def statuses(lines: list[dict[str, Any]]) -> dict[str, str]:
    """version -> status, for every version the log names (the others: `no criteria`)."""
    out: dict[str, str] = {}
    for line in lines:
        vid = line.get("version")
        if line.get("kind") == "verdict":
            out[vid] = ACCEPTED if line.get("passed") else REJECTED
        elif line.get("kind") == "override" and out.get(vid) == REJECTED:
            out[vid] = OVERRIDDEN
    return out


def is_accepted(status: str) -> bool:
    return status != REJECTED


def default_version(bundle: Any) -> str | None:
    """The version commands use when none is named: the newest version of the newest version's
    lineage that is not `not accepted` (the newest itself when no verdict failed)."""
    head = bundle.manifest.head
    if head is None:
        return None
    lines, _ = read_log(bundle.root)
    if not lines:
        return head
    status = statuses(lines)
    chain = [e.id for e in bundle.lineage(head)]
    return next(
        (vid for vid in reversed(chain) if is_accepted(status.get(vid, NO_CRITERIA))), chain[0]
    )


def version_status(bundle: Any, version: str) -> dict[str, Any]:
    """{status, verdict (the latest, or None), overrides} of `version`."""
    lines, _ = read_log(bundle.root)
    mine = [line for line in lines if line.get("version") == version]
    verdicts = [line for line in mine if line.get("kind") == "verdict"]
    return {
        "status": statuses(mine).get(version, NO_CRITERIA),
        "verdict": verdicts[-1] if verdicts else None,
        "overrides": [line for line in mine if line.get("kind") == "override"],
    }


def record_override(bundle: Any, version: str, *, by: str, reason: str) -> dict[str, Any]:
    """Record that `by` accepts `version` despite its failed criteria, and why."""
    vid = bundle.resolve_version(version)
    problems = [
        f"--{name} is empty" for name, text in (("by", by), ("reason", reason)) if not text.strip()
    ]
    if problems:
        raise BundleError(
            "; ".join(problems),
            "an override names who accepts the version and why, e.g. --by 'Dr A. Lee' --reason "
            "'drop on xray reviewed on 40 cases, clinically irrelevant'",
        )
    status = version_status(bundle, vid)["status"]
    if status != REJECTED:
        raise BundleError(
            f"version {vid} is {status}: there is nothing to override",
            "only a version that failed its acceptance criteria needs `medqwen accept`; "
            "`medqwen log` shows each version's acceptance",
        )
    bundle.check_version(vid)  # never vouch for a damaged version
    before = default_version(bundle)
    line = append_line(
        bundle.root,
        {"kind": "override", "version": vid, "version_sha256": bundle.entry(vid).sha256,
         "by": by.strip(), "reason": reason.strip()},
        "medqwen accept",
    )  # fmt: skip
    return {**line, "default_before": before, "default_after": default_version(bundle)}

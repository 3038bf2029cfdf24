"""evals.jsonl: one JSON line per (version, task, metric, value), appended under the lock."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medqwen_cli.bundle.lock import bundle_lock
from medqwen_cli.bundle.manifest import EVALS_FILE, now
from medqwen_cli.errors import BundleError


def append(root: Path, records: list[dict[str, Any]]) -> None:
    """Append `records`, each stamped with the time, and fsync (nothing when empty)."""
    if not records:
        return
    lines = "".join(json.dumps({"time": now(), **r}, sort_keys=True) + "\n" for r in records)
    with bundle_lock(root, "evaluate"), open(root / EVALS_FILE, "a", encoding="utf-8") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())


def read(root: Path) -> list[dict[str, Any]]:
    """Every line of the bundle's evals.jsonl (none when absent); a broken line is named."""
    file = root / EVALS_FILE
    if not file.is_file():
        return []
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise BundleError(
                f"{file}:{number} is not valid JSON",
                "remove or repair that line (a write was cut off?)",
            ) from None
    return records

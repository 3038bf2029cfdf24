"""Run a benchmark script and parse the markdown tables it prints (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: int = 600) -> str:
    cmd = [sys.executable, str(REPO / "benchmarks" / name), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text` as a list of rows (header -> cell)."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if block:
            header, rule, *rows = block
            assert all(set(c) <= {"-", ":"} for c in rule), rule
            assert all(len(r) == len(header) for r in rows), block
            found.append([dict(zip(header, r, strict=True)) for r in rows])
            block = []
    return found


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

"""Write the strategy study's report tables into docs/continual.md (between the
`strategies-targets` and `strategies-tables` markers), from the committed results file.

    .venv/bin/python scripts/fill_continual_docs.py

tests/benchmarks/test_forgetting_study.py checks the docs equal the report: run this after
committing new results to benchmarks/results/continual-strategies.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import forgetting_study as study  # noqa: E402

MARK = "Targets (kept >= 0.95 of A with B after B >= 0.95):\n"


def main() -> None:
    results = json.loads((REPO / "benchmarks/results/continual-strategies.json").read_text())
    conflict = study.report(results, None).split("## conflict:")[1].split("\n", 1)[1]
    conflict = conflict.split("\n## ")[0]
    parts = {
        "targets": conflict.split(MARK)[1].strip(),
        "tables": conflict.split("\nTargets (")[0].strip(),
    }
    path = REPO / "docs/continual.md"
    doc = path.read_text()
    for name, part in parts.items():
        start, end = f"<!-- strategies-{name}:start -->\n", f"<!-- strategies-{name}:end -->"
        head, rest = doc.split(start)
        doc = head + start + part + "\n" + end + rest.split(end, 1)[1]
    path.write_text(doc)
    print(f"updated {path}")


if __name__ == "__main__":
    main()

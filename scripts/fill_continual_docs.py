"""Write the study reports' tables into the docs, from the committed results files:

    docs/continual.md         continual-strategies.json: `strategies-targets` (the targets
                              table), `strategies-tables` (every table of the conflict pair
                              but the targets), `strategies-cells` (the per-cell table)
    docs/forgetting-study.md  forgetting-study-rules.json: `conflict`, `control`
    docs/continual.md         sequence-study.json: `sequence-answer` (the per-strategy table
                              and the targets against joint)
    docs/sequence.md          sequence-study.json: `sequence-report` (the whole report)
    README.md                 sequence-study.json: `sequence-summary` (one row per strategy)

    .venv/bin/python scripts/fill_continual_docs.py

tests/benchmarks/test_forgetting_study.py checks each doc equals `filled(doc)`: run this after
committing new results to benchmarks/results/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from sequence_report import report as sequence_report  # noqa: E402
from study_report import TARGETS_HEADING, report  # noqa: E402

CELLS_HEADING = "Per cell (A's records gained and lost between after A and after B):\n"
DOCS = {  # doc -> results file
    "docs/continual.md": "benchmarks/results/continual-strategies.json",
    "docs/forgetting-study.md": "benchmarks/results/forgetting-study-rules.json",
    "docs/sequence.md": "benchmarks/results/sequence-study.json",
    "README.md": "benchmarks/results/sequence-study.json",
}
SEQUENCE = "benchmarks/results/sequence-study.json"


def sequence_parts() -> dict[str, str]:
    """The sequence study's report, whole, and its answer (up to the accuracy matrices)."""
    text = sequence_report(json.loads((REPO / SEQUENCE).read_text(encoding="utf-8")))
    text = text.replace("\n## ", "\n### ")  # inside a section of the doc
    summary = text.split("\n### Summary")[1].split("\n", 1)[1].split("\n### ")[0].strip()
    head = text.split("\n", 1)[0]  # cells, CPU, settings
    return {
        "answer": text.split("\n### Accuracy matrix")[0].strip(),
        "report": text.strip(),
        "summary": f"{head}\n\n{summary}",
    }


def _pair(text: str, pair: str) -> str:
    """The report's section of `pair`, without its heading and the definitions line."""
    part = text.split(f"## {pair}:")[1].split("\n", 1)[1]
    return part.split("\n## ")[0].split("\ndefinitions:")[0].strip()


def parts(doc: str) -> dict[str, str]:
    """Marker name -> the report text that goes between its markers in `doc`."""
    if doc == "docs/sequence.md":
        return {"sequence-report": sequence_parts()["report"]}
    if doc == "README.md":
        return {"sequence-summary": sequence_parts()["summary"]}
    results = json.loads((REPO / DOCS[doc]).read_text(encoding="utf-8"))
    text = report(results, None)
    if doc == "docs/forgetting-study.md":
        return {"conflict": _pair(text, "conflict"), "control": _pair(text, "control")}
    conflict = _pair(text, "conflict")
    tables, rest = conflict.split("\n" + CELLS_HEADING)
    cells, targets = rest.split("\n" + TARGETS_HEADING + "\n")
    notes = text.split("## conflict:")[0].strip()  # A versions, CPUs, base
    return {
        "strategies-targets": targets.strip(),
        "strategies-tables": notes + "\n\n" + tables.strip(),
        "strategies-cells": cells.strip(),
        "sequence-answer": sequence_parts()["answer"],
    }


def filled(doc: str) -> str:
    """`doc`'s text with every marked block replaced by the report's."""
    text = (REPO / doc).read_text(encoding="utf-8")
    for name, part in parts(doc).items():
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        head, rest = text.split(start)
        text = head + start + part + "\n" + end + rest.split(end, 1)[1]
    return text


def main() -> None:
    for doc in DOCS:
        (REPO / doc).write_text(filled(doc), encoding="utf-8")
        print(f"updated {doc}")


if __name__ == "__main__":
    main()

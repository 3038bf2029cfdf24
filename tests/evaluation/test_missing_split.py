"""`load_eval_tasks` with and without notes: a dataset without its eval split (`MissingSplit`) is
left out with a note, or fails (the watch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medqwen_cli.errors import EvaluationError, MissingSplit
from medqwen_cli.evaluation.api import load_eval_tasks
from medqwen_cli.recipe import load_recipe


def _records(path: Path, prefix: str, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"id": f"{prefix}{i}", "question": "Effusion?", "answer": "yes"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def recipe(tmp_path: Path):
    """Task `mixed`: a directory with train and eval files, and a single file; task `single`:
    the single file; task `unscored`: eval_split null."""
    _records(tmp_path / "split" / "train.jsonl", "t", 3)
    _records(tmp_path / "split" / "eval.jsonl", "e", 2)
    _records(tmp_path / "one.jsonl", "o", 3)
    path = tmp_path / "r.yaml"
    path.write_text(
        "tasks:\n"
        "  mixed:\n    datasets:\n      - path: split\n      - path: one.jsonl\n"
        "  single:\n    datasets:\n      - path: one.jsonl\n"
        "  unscored:\n    datasets:\n      - path: split\n        eval_split: null\n"
    )
    return load_recipe(path)


def test_notes_leave_out_what_has_no_eval_records(recipe, tmp_path: Path) -> None:
    notes: list[str] = []
    tasks = load_eval_tasks(recipe, ["mixed", "single", "unscored"], data_dir=tmp_path, notes=notes)
    assert list(tasks) == ["mixed"]
    assert tasks["mixed"].datasets == ["split"] and len(tasks["mixed"].records) == 2
    assert [n.split(":", 1)[0] for n in notes] == [
        "task 'mixed' is scored on split only",
        "task 'single' has no eval split and is not scored",
        "task 'unscored' has no eval split and is not scored",
    ]
    assert f"{tmp_path / 'one.jsonl'}: the file has no split 'eval'" in notes[1]
    assert "eval_split: null" in notes[2]


def test_without_notes_it_fails(recipe, tmp_path: Path) -> None:
    with pytest.raises(MissingSplit, match="no split 'eval'"):
        load_eval_tasks(recipe, ["mixed"], data_dir=tmp_path)
    with pytest.raises(EvaluationError, match="every dataset sets eval_split: null"):
        load_eval_tasks(recipe, ["unscored"], data_dir=tmp_path)

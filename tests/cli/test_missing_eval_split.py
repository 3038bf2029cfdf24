"""A dataset that is one data file holds one split, the training one (issue 20: validate and train
must agree). `validate` warns and exits 0; `train` trains on it; `evaluate` and `continue` leave
its task out of the scores with one note, and go on with the other tasks. Each single-split
reader format is checked: native JSONL, LLaVA JSON, CSV of reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medqwen_cli.bundle import Bundle

QUICK = ["--set", "train.max_steps=2", "--set", "train.checkpoint_every=1000",
         "--set", "eval.max_samples=4"]  # fmt: skip
NOT_SCORED = "has no eval split and is not scored"


def _png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8)
    Image.fromarray(np.stack([ramp] * 3, axis=-1), "RGB").save(path)
    return path.name


def _jsonl(root: Path) -> Path:
    image = _png(root / "a.png")
    lines = [
        {"id": f"r{i}", "images": [image], "question": "Effusion?", "answer": ("yes", "no")[i % 2]}
        for i in range(4)
    ]
    (root / "one.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "one.jsonl"


def _llava(root: Path) -> Path:
    image = _png(root / "a.png")
    items = [
        {
            "id": f"c{i}",
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\nWhich organ is shown?"},
                {"from": "gpt", "value": ("lung", "liver")[i % 2]},
            ],
        }
        for i in range(4)
    ]
    (root / "chat.json").write_text(json.dumps(items))
    return root / "chat.json"


def _csv(root: Path) -> Path:
    image = _png(root / "a.png")
    rows = "".join(f"{image},No acute finding {i}.\n" for i in range(4))
    (root / "reports.csv").write_text("image,report\n" + rows)
    return root / "reports.csv"


FORMATS: dict[str, Callable[[Path], Path]] = {"jsonl": _jsonl, "llava": _llava, "csv": _csv}


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note: ")]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_validate_warns_and_exits_0(cli, tmp_path: Path, fmt: str) -> None:
    data = FORMATS[fmt](tmp_path / "data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  datasets:\n    - path: {data}\n")
    table = cli("validate", recipe, "-f", "table")
    assert table.code == 0, table.err
    (warning,) = [line for line in table.err.splitlines() if line.startswith("warning: ")]
    assert f"{data}: the file has no split 'eval'" in warning
    assert "evaluate and continue will not score data.datasets.0" in warning
    assert "Error" not in table.err and "no split 'eval'" in table.out  # the table names it too
    result = cli("validate", recipe, "-f", "json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["valid"] is True and len(out["warnings"]) == 1
    assert "no split 'eval'" in out["warnings"][0]
    splits = [
        (d["split"], d["records"], d["problems"], len(d["warnings"])) for d in out["datasets"]
    ]
    assert splits == [("train", 4, [], 0), ("eval", 0, [], 1)]


def test_validate_still_fails_on_other_problems(cli, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "data")
    with data.open("a") as f:
        f.write('{"id": "bad", "question": "no image, no answer"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  datasets:\n    - path: {data}\n")
    result = cli("validate", recipe, "-f", "table")
    assert result.code == 1 and f"{data}:5: " in result.err
    assert "1 data problem in 1 file" in result.err and "warning: " in result.err


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_continue_and_evaluate_leave_the_task_out(
    cli, bundle_dir: Path, tmp_path: Path, fmt: str
) -> None:
    data = str(FORMATS[fmt](tmp_path / "data"))
    assert cli("train", bundle_dir, "--task", "xray", *QUICK, "-f", "json").code == 0
    # continue scores the parent on the new task, then the new version on xray and it: one note
    result = cli("continue", bundle_dir, "--task", data, *QUICK, "-f", "json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["version"] == "v0003" and Bundle.open(bundle_dir).head == "v0003"
    (note,) = _notes(result.err)
    assert f"task {data!r} {NOT_SCORED}" in note and "no split 'eval'" in note
    assert len(out["notes"]) == 1 and "Error" not in result.err
    scored = {(e["version"], e["task"]) for e in out["evaluations"] if e["headline"]}
    assert scored == {("v0003", "xray")}  # never a 0 for the task without eval records

    # the lineage (xray, the file): xray is scored, the file is noted
    evaluated = cli("evaluate", bundle_dir, "--set", "eval.max_samples=4", "-f", "json")
    assert evaluated.code == 0, evaluated.err
    assert list(json.loads(evaluated.out)["headlines"]) == ["xray"]
    assert len(_notes(evaluated.err)) == 1 and NOT_SCORED in evaluated.err

    # the file alone: nothing to report, one error line and its hint, nothing recorded
    before = len(Bundle.open(bundle_dir).read_evals())
    alone = cli("evaluate", bundle_dir, "--task", data)
    assert alone.code == 1 and alone.out == ""
    (error,) = [line for line in alone.err.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: nothing to score: ") and NOT_SCORED in error
    assert "Hint: " in alone.err and not _notes(alone.err)
    assert len(Bundle.open(bundle_dir).read_evals()) == before


def test_train_reads_it_and_watch_refuses_it(cli, bundle_dir: Path, tmp_path: Path) -> None:
    data = str(_jsonl(tmp_path / "data"))
    watched = cli("train", bundle_dir, "--task", "xray", "--watch", data, *QUICK)
    assert watched.code == 1 and "no split 'eval'" in watched.err and "Hint: " in watched.err
    assert not (bundle_dir / "work").exists() and Bundle.open(bundle_dir).head == "v0001"
    trained = cli("train", bundle_dir, "--task", data, *QUICK, "-f", "json")
    assert trained.code == 0, trained.err
    assert json.loads(trained.out)["notes"] == [] and not _notes(trained.err)

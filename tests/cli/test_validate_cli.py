"""`medqwen validate` reads every record of every dataset split and lists every problem at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SECRET = "Patient Jane Roe, 1961"  # record text: never printed


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 99, np.uint8), "L").save(path)


def _dataset(root: Path) -> Path:
    """train.jsonl with five bad lines among good ones, eval.jsonl with one bad line."""
    _png(root / "img" / "ok.png")
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    good = {"images": ["img/ok.png"], "question": SECRET, "answer": "yes"}
    train = [
        json.dumps({**good, "id": "a"}),  # 1 ok
        json.dumps({**good, "id": "b", "images": ["img/missing.png"]}),  # 2 image not found
        '{"id": "c", "question": "' + SECRET + '", ',  # 3 malformed JSON
        json.dumps({"id": "d", "images": ["img/ok.png"], "question": SECRET}),  # 4 no answer
        json.dumps({**good, "id": "a"}),  # 5 duplicate id
        json.dumps({**good, "id": "f", "images": ["img/broken.png"]}),  # 6 corrupt image
        json.dumps({**good, "id": "g"}),  # 7 ok
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("\n".join(train) + "\n")
    (root / "eval.jsonl").write_text(json.dumps({**good, "id": "e", "qestion": SECRET}) + "\n")
    return root


def _recipe(tmp_path: Path, data: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data:\n  datasets:\n    - path: {data}\n"
        f"tasks:\n  mine:\n    datasets:\n      - path: {data}\n"  # the same dataset: read once
    )
    return recipe


def test_every_bad_record_is_listed_as_file_line(cli, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "ds")
    result = cli("validate", _recipe(tmp_path, data), "--format", "table")
    assert result.code == 1
    train, ev = data / "train.jsonl", data / "eval.jsonl"
    lines = [line for line in result.err.splitlines() if line.startswith(str(data))]
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{train}:2",
        f"{train}:3",
        f"{train}:4",
        f"{train}:5",
        f"{train}:6",
        f"{ev}:1",
    ]
    assert "not found" in lines[0] and "malformed JSON" in lines[1] and "'answer'" in lines[2]
    assert "duplicate id (first used at line 1)" in lines[3] and "corrupt" in lines[4]
    assert "unknown field 'qestion'" in lines[5]
    assert "Error: " in result.err and "6 data problems in 2 files" in result.err
    assert SECRET not in result.err + result.out


def test_json_lists_problems_with_dataset_split_and_hint(cli, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "ds")
    result = cli("validate", _recipe(tmp_path, data), "--format", "json")
    assert result.code == 1
    out = json.loads(result.out)
    assert out["valid"] is False and len(out["problems"]) == 6
    first = out["problems"][0]
    assert first["where"] == f"{data / 'train.jsonl'}:2" and first["split"] == "train"
    assert first["dataset"] == "data.datasets.0" and first["hint"]
    assert [(d["split"], d["records"]) for d in out["datasets"]] == [("train", 2), ("eval", 0)]
    assert SECRET not in result.out


def test_whole_file_problems_and_no_data(cli, tmp_path: Path) -> None:
    """A dataset file with one split has no eval split: a warning (evaluate leaves it out), said
    once, with the fix; the exit code stays 0 (tests/cli/test_missing_eval_split.py)."""
    single = tmp_path / "one.jsonl"
    _png(tmp_path / "ok.png")
    single.write_text(json.dumps({"images": ["ok.png"], "question": "q", "answer": "no"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  datasets:\n    - path: {single}\n")
    result = cli("validate", recipe, "--format", "table")
    assert result.code == 0 and f"warning: {single}: the file has no split 'eval'" in result.err
    assert result.err.count("warning: ") == 1 and "eval_split: null" in result.err
    fixed = cli("validate", recipe, "--set", "data.datasets.0.eval_split=null", "-f", "json")
    assert fixed.code == 0, fixed.err
    assert "warning: " not in fixed.err and json.loads(fixed.out)["warnings"] == []
    assert [d["records"] for d in json.loads(fixed.out)["datasets"]] == [1]
    assert cli("validate", recipe, "--no-data", "-f", "json").code == 0


def test_builtin_datasets_are_generated_and_read(cli) -> None:
    result = cli("validate", REPO / "recipes/debug/tiny.yaml", "--format", "json")
    assert result.code == 0, result.err
    read = {(d["name"], d["split"]): d["records"] for d in json.loads(result.out)["datasets"]}
    assert set(read) == {(t, s) for t in ("xray", "ct", "pathology") for s in ("train", "eval")}
    assert all(n > 0 for n in read.values())

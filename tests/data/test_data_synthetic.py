"""Built-in tasks: deterministic bytes, every record type, distinct tasks, POPE negatives."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_helpers import BUILTIN_SIZE, spec
from PIL import Image

from medqwen_cli.data import GENERATOR_VERSION, generate_task, load_records
from medqwen_cli.data.synthetic import ensure_builtin
from medqwen_cli.errors import DataError

SYNTHETIC = ("xray", "ct", "mri", "fundus", "pathology")


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate_task("fundus", tmp_path / "a", seed=3, size=BUILTIN_SIZE)
    b = generate_task("fundus", tmp_path / "b", seed=3, size=BUILTIN_SIZE)
    c = generate_task("fundus", tmp_path / "c", seed=4, size=BUILTIN_SIZE)
    files = _files(a)
    assert files == _files(b)
    assert {"dataset.json", "train.jsonl", "eval.jsonl", "images/train-0000.png"} <= set(files)
    other = _files(c)
    assert other["train.jsonl"] != files["train.jsonl"]
    assert other["images/train-0000.png"] != files["images/train-0000.png"]


def test_eval_stream_does_not_depend_on_train_size(tmp_path: Path) -> None:
    small = generate_task("ct", tmp_path / "s", seed=0, size=30)
    large = generate_task("ct", tmp_path / "l", seed=0, size=32)  # both: 10 eval records
    assert (small / "eval.jsonl").read_bytes() == (large / "eval.jsonl").read_bytes()


@pytest.mark.parametrize("name", SYNTHETIC)
def test_task_contents(builtin_cache: Path, name: str) -> None:
    root = ensure_builtin(name, builtin_cache, seed=0, size=BUILTIN_SIZE)
    assert root.name == f"{name}-{GENERATOR_VERSION}-0-n{BUILTIN_SIZE}"
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION and manifest["seed"] == 0
    assert manifest["counts"] == {"train": BUILTIN_SIZE, "eval": 8}
    train = load_records(
        spec(f"builtin:{name}"), "train", cache_dir=builtin_cache, builtin_size=BUILTIN_SIZE
    )
    evaluation = load_records(
        spec(f"builtin:{name}"), "eval", cache_dir=builtin_cache, builtin_size=BUILTIN_SIZE
    )
    assert len(train) == BUILTIN_SIZE and len(evaluation) == 8
    assert {r.type for r in train} == {"vqa_closed", "vqa_open", "report", "classification", "pope"}
    assert all(r.task == name for r in train)
    for record in train:
        with Image.open(record.images[0]) as image:
            assert image.size == (112, 112)
        if record.type == "classification":
            assert record.labels[0] == "normal" and record.answer in record.labels
        if record.type == "pope":
            assert record.meta["pope_split"] in ("random", "popular", "adversarial")
            present = record.meta["object"] in record.meta["findings"]
            assert record.answer == ("yes" if present else "no")


def test_tasks_differ_in_vocabulary_report_style_and_look(builtin_cache: Path) -> None:
    vocab, report_heads, means = {}, {}, {}
    for name in SYNTHETIC:
        generate = generate_task(name, builtin_cache / "look" / name, seed=0, size=BUILTIN_SIZE)
        manifest = json.loads((generate / "dataset.json").read_text())
        vocab[name] = set(manifest["findings"])
        reports = [json.loads(line) for line in (generate / "train.jsonl").read_text().splitlines()]
        report_heads[name] = next(r["answer"] for r in reports if r["type"] == "report")[:12]
        with Image.open(generate / "images" / "train-0000.png") as image:
            means[name] = np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1))
    names = list(vocab)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert len(vocab[a] & vocab[b]) <= 1, (a, b)  # e.g. hemorrhage in mri and fundus
            assert report_heads[a] != report_heads[b]
            assert np.abs(means[a] - means[b]).max() > 5, (a, b)


def test_pope_uses_all_three_negative_strategies(tmp_path: Path) -> None:
    root = generate_task("xray", tmp_path / "x", seed=0, size=60)
    pope = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    pope = [r for r in pope if r["type"] == "pope"]
    splits = Counter(r["meta"]["pope_split"] for r in pope)
    answers = Counter(r["answer"] for r in pope)
    assert set(splits) == {"random", "popular", "adversarial"}
    assert answers["yes"] > 0 and answers["no"] > 0


def test_ensure_builtin_reuses_and_cleans_up(builtin_cache: Path) -> None:
    first = ensure_builtin("mri", builtin_cache / "reuse", seed=1, size=5)
    stamp = (first / "dataset.json").stat().st_mtime_ns
    again = ensure_builtin("mri", builtin_cache / "reuse", seed=1, size=5)
    assert again == first and (first / "dataset.json").stat().st_mtime_ns == stamp
    leftovers = [
        p.name for p in (builtin_cache / "reuse" / "builtin").iterdir() if p.name.startswith(".")
    ]
    assert leftovers == []


def test_unknown_task_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown built-in task"):
        generate_task("ultrasound", tmp_path)
    with pytest.raises(DataError, match="at least 1"):
        generate_task("xray", tmp_path, size=0)


def test_dicom_task_from_pydicom_files(builtin_cache: Path) -> None:
    pytest.importorskip("pydicom")
    if importlib.util.find_spec("data_store") is None:
        pytest.skip("pydicom-data is not installed")
    train = load_records(spec("builtin:dicom"), "train", cache_dir=builtin_cache)
    evaluation = load_records(spec("builtin:dicom"), "eval", cache_dir=builtin_cache)
    modalities = Counter(r.answer for r in train + evaluation if r.type == "classification")
    assert {"CT", "MRI", "X-ray", "ultrasound", "nuclear medicine"} <= set(modalities)
    assert any(
        r.question == "Which body part is shown?" and r.answer == "chest"
        for r in train + evaluation
    )
    assert not {r.images[0] for r in train} & {r.images[0] for r in evaluation}
    for record in train[:5]:
        with Image.open(record.images[0]) as image:
            assert max(image.size) <= 112


def test_dicom_task_without_pydicom_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "data_store" else real(name, *a),
    )
    with pytest.raises(DataError) as info:
        generate_task("dicom", tmp_path)
    assert "pip install pydicom pydicom-data" in str(info.value)


def _rule_records(builtin_cache: Path, name: str, split: str = "eval"):
    return load_records(spec(f"builtin:{name}"), split, cache_dir=builtin_cache, builtin_size=40)


def test_rule_tasks_ask_the_same_questions_and_answer_by_their_rules(builtin_cache: Path) -> None:
    from medqwen_cli.data.synthetic.rules import QUESTIONS

    tails = {kind: question for kind, (question, _) in QUESTIONS.items()}
    for name, mirrored, large_mm in (("cxr-rules", True, 30), ("ct-rules", True, 30),
                                     ("derm-rules", False, 6)):  # fmt: skip
        records = _rule_records(builtin_cache, name)
        assert len(records) == 20  # half of the train size
        assert Counter(r.meta["kind"] for r in records) == {"side": 10, "size": 10}
        for r in records:
            m = r.meta
            assert r.type == "vqa_closed" and r.answer in r.labels
            assert r.question.endswith(tails[m["kind"]])
            assert f"a {m['size_mm']} mm lesion in the {m['level']} {m['image_side']}" in r.question
            if m["kind"] == "side":
                flipped = {"left": "right", "right": "left"}[m["image_side"]]
                assert r.answer == (flipped if mirrored else m["image_side"])
            else:
                assert r.answer == ("large" if m["size_mm"] >= large_mm else "small")


def test_rule_pairs_conflict_and_control_does_not(builtin_cache: Path) -> None:
    from medqwen_cli.data.synthetic.rules import RULES

    cxr, derm, ct = RULES["cxr-rules"], RULES["derm-rules"], RULES["ct-rules"]
    records = _rule_records(builtin_cache, "cxr-rules", "train")
    flips = [cxr.answer(r.meta["kind"], r.meta["image_side"], r.meta["size_mm"])
             != derm.answer(r.meta["kind"], r.meta["image_side"], r.meta["size_mm"])
             for r in records]  # fmt: skip
    assert flips == [r.meta["conflicts_with_other_convention"] for r in records]
    sides = [f for f, r in zip(flips, records, strict=True) if r.meta["kind"] == "side"]
    assert all(sides)  # every side question flips between the pair's tasks
    assert 0 < sum(flips) < len(flips)  # some size questions agree
    assert not any(
        ct.answer(r.meta["kind"], r.meta["image_side"], r.meta["size_mm"]) != r.answer
        for r in records
    )  # the control applies the same rules


def test_rule_task_image_shows_the_lesion_on_the_stated_side(builtin_cache: Path) -> None:
    for r in _rule_records(builtin_cache, "derm-rules")[:8]:
        with Image.open(r.images[0]) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float64)  # (112, 112)
        half = pixels.shape[1] // 2
        darkest_left = pixels[:, :half].min() < pixels[:, half:].min()  # a dark mole on skin
        assert ("left" if darkest_left else "right") == r.meta["image_side"]

"""Hugging Face datasets copied as files: parquet files and shards, save_to_disk folders (the
`hf` reader), on small fixtures written here with pyarrow and datasets (no download)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import spec, write_jsonl, write_png
from PIL import Image

from medqwen_cli.data import detect_format, load_records, read_dataset
from medqwen_cli.errors import DataError, MissingSplit

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_bytes(size: tuple[int, int] = (24, 16), value: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def write_vqa(path: Path, rows: list[tuple[Any, str, str]], **extra: list[Any]) -> Path:
    """A VQA-RAD-like parquet file: rows of (image bytes, question, answer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"bytes": data, "path": f"synpic{i}.jpg"} for i, (data, _, _) in enumerate(rows)]
    table = pa.table(
        {
            "image": pa.array(images, type=IMAGE),
            "question": [question for _, question, _ in rows],
            "answer": [answer for _, _, answer in rows],
            **extra,
        }
    )
    pq.write_table(table, path)
    return path


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: the data directory must not change."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def sharded(root: Path) -> Path:
    """The Hub layout: data/train-0000{0,1}-of-00002.parquet and data/test-00000-of-00001...."""
    small, large = png_bytes((24, 16)), png_bytes((30, 20), 200)
    write_vqa(root / "data/train-00000-of-00002.parquet", [(small, "Is there a mass?", "yes")])
    write_vqa(
        root / "data/train-00001-of-00002.parquet",
        [(large, "Which lobe?", "left upper"), (small, "Effusion?", "No")],
    )
    write_vqa(root / "data/test-00000-of-00001-0123abcd.parquet", [(large, "Is it normal?", "no")])
    (root / "README.md").write_text("dataset card\n")
    return root


# --------------------------------------------------------------------------- records


def test_parquet_file_records_and_embedded_images(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "vqa_rad"
    small, large = png_bytes((24, 16)), png_bytes((30, 20), 200)
    path = write_vqa(
        data / "vqa_rad.parquet",
        [(small, "Is there a mass?", "Yes"), (large, "Where is it?", "left lung"),
         (small, "Any effusion?", "no")],
    )  # fmt: skip
    before = tree(data)
    assert detect_format(path) == "hf"
    records = load_records(spec(path), "train", cache_dir=cache)
    assert [r.id for r in records] == ["vqa_rad-1", "vqa_rad-2", "vqa_rad-3"]
    assert [r.question for r in records] == ["Is there a mass?", "Where is it?", "Any effusion?"]
    assert [r.answer for r in records] == ["yes", "left lung", "no"]
    assert [r.type for r in records] == ["vqa_closed", "vqa_open", "vqa_closed"]
    assert [r.labels for r in records] == [["yes", "no"], None, ["yes", "no"]]
    assert [(r.source, r.line) for r in records] == [(str(path), n) for n in (1, 2, 3)]
    with Image.open(records[0].images[0]) as first, Image.open(records[1].images[0]) as second:
        assert first.size == (24, 16) and second.size == (30, 20)
    assert records[0].images == records[2].images  # the same bytes are one file in the cache
    assert Path(records[0].images[0]).parent == cache / "hf-images"
    assert len(list((cache / "hf-images").iterdir())) == 2  # no temporary file left behind
    with pytest.raises(MissingSplit, match="the file has no split 'eval'") as info:
        load_records(spec(path), "eval", cache_dir=cache)  # one file: the training split
    assert "parquet files named by split (train-*.parquet, test-*.parquet)" in info.value.hint
    assert load_records(spec(path), "train", cache_dir=cache) == records  # read from the cache
    assert tree(data) == before


def test_shards_named_by_split(tmp_path: Path, cache: Path) -> None:
    root = sharded(tmp_path / "pathvqa")
    before = tree(root)
    assert detect_format(root) == "hf"
    loaded = read_dataset(spec(root), "train", cache_dir=cache)
    train = loaded.records
    assert loaded.format == "hf"
    assert [r.id for r in train] == ["train-1", "train-2", "train-3"]
    assert [(Path(r.source).name, r.line) for r in train] == [
        ("train-00000-of-00002.parquet", 1),
        ("train-00001-of-00002.parquet", 1),
        ("train-00001-of-00002.parquet", 2),
    ]
    assert [r.answer for r in train] == ["yes", "left upper", "no"]
    test = load_records(spec(root), "eval", cache_dir=cache)  # eval reads test
    assert [(r.id, r.answer, r.labels) for r in test] == [("test-1", "no", ["yes", "no"])]
    with Image.open(test[0].images[0]) as image:
        assert image.size == (30, 20)
    with pytest.raises(MissingSplit, match=r"no split 'val' \(splits: test, train\)"):
        load_records(spec(root), "val", cache_dir=cache)
    assert tree(root) == before
    benchmark = tmp_path / "benchmark"  # test shards only: no training split is an error
    write_vqa(benchmark / "test-00000-of-00001.parquet", [(png_bytes(), "Normal?", "yes")])
    with pytest.raises(DataError, match=r"no split 'train' \(splits: test\)") as info:
        load_records(spec(benchmark), "train", cache_dir=cache)
    assert not isinstance(info.value, MissingSplit)


def test_validation_split_and_split_folders(tmp_path: Path, cache: Path) -> None:
    """eval falls back to validation; split folders (`<split>/0000.parquet`) name the split."""
    root = tmp_path / "converted"
    write_vqa(root / "train" / "0000.parquet", [(png_bytes(), "Mass?", "yes")])
    write_vqa(root / "validation" / "0000.parquet", [(png_bytes(), "Open?", "a lesion")])
    assert detect_format(root) == "hf"
    assert [r.id for r in load_records(spec(root), "train", cache_dir=cache)] == ["train-1"]
    evaluation = load_records(spec(root), "eval", cache_dir=cache)
    assert [(r.id, r.type) for r in evaluation] == [("validation-1", "vqa_open")]
    one_split = root / "train"  # numbered shards only: one split without split information
    assert [r.id for r in load_records(spec(one_split), "train", cache_dir=cache)] == ["train-1"]
    with pytest.raises(MissingSplit):
        load_records(spec(one_split), "eval", cache_dir=cache)


def test_image_paths_and_aliased_columns(tmp_path: Path, cache: Path) -> None:
    """SLAKE-like: `img_name` paths under imgs/, answer_type CLOSED, id and language columns."""
    write_png(tmp_path / "imgs" / "xmlab1" / "source.png", size=(12, 10))
    table = pa.table(
        {
            "img_name": ["xmlab1/source.png", "xmlab1/source.png"],
            "question": ["Which side?", "Is it normal?"],
            "answer": ["Left", "Yes"],
            "answer_type": ["CLOSED", "CLOSED"],
            "qid": [7, 8],
            "q_lang": ["en", "en"],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    records = load_records(spec(tmp_path), "train", cache_dir=cache)
    assert [r.id for r in records] == ["7", "8"]
    assert [r.type for r in records] == ["vqa_closed", "vqa_closed"]
    assert records[0].labels is None and records[1].labels == ["yes", "no"]
    assert records[0].images == [str(tmp_path / "imgs" / "xmlab1" / "source.png")]
    assert records[0].meta == {"lang": "en"}


def test_save_to_disk_dataset_dict_with_class_labels(tmp_path: Path, cache: Path) -> None:
    """MedMNIST-like: an Image column and a ClassLabel, saved with datasets' save_to_disk."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["normal", "pneumonia"])}
    )

    def split(labels: list[int]) -> Any:
        images = [{"bytes": png_bytes((8, 8), 30 * i), "path": None} for i in range(len(labels))]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    root = tmp_path / "pneumoniamnist"
    datasets.DatasetDict({"train": split([0, 1, 1]), "test": split([1])}).save_to_disk(root)
    before = tree(root)
    assert detect_format(root) == "hf"
    train = load_records(spec(root), "train", cache_dir=cache)
    assert [(r.id, r.answer, r.type) for r in train] == [
        ("train-1", "normal", "classification"),
        ("train-2", "pneumonia", "classification"),
        ("train-3", "pneumonia", "classification"),
    ]
    assert train[0].labels == ["normal", "pneumonia"]
    assert train[0].question == "Which class does this image show? Options: normal, pneumonia."
    assert Path(train[0].source).suffix == ".arrow" and train[2].line == 3
    with Image.open(train[1].images[0]) as image:
        assert image.size == (8, 8)
    assert [r.answer for r in load_records(spec(root), "eval", cache_dir=cache)] == ["pneumonia"]
    assert tree(root) == before

    single = tmp_path / "single"  # a Dataset folder: one split, served for training only
    split([0]).save_to_disk(single)
    assert detect_format(single) == "hf"
    assert [r.id for r in load_records(spec(single), "train", cache_dir=cache)] == ["single-1"]
    with pytest.raises(MissingSplit):
        load_records(spec(single), "eval", cache_dir=cache)


def test_other_directories_are_not_taken_for_hf(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "img" / "a.png")
    item = {"images": ["img/a.png"], "question": "q", "answer": "no"}
    write_jsonl(tmp_path / "train.jsonl", [item])
    assert len(load_records(spec(tmp_path), "train", cache_dir=cache)) == 1
    with pytest.raises(DataError, match="no parquet files or save_to_disk dataset"):
        load_records(spec(tmp_path, format="hf"), "train", cache_dir=cache)


# --------------------------------------------------------------------------- errors


def test_missing_column_is_one_line_naming_the_columns_found(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "train.parquet"
    table = pa.table(
        {"image": pa.array([{"bytes": png_bytes(), "path": None}], type=IMAGE),
         "query": ["Is there a mass?"], "response": ["yes"]}
    )  # fmt: skip
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        load_records(spec(path), "train", cache_dir=cache)
    message = info.value.message
    assert message.startswith(f"{path}: needs a question column (question, prompt) and an answer")
    assert message.endswith("columns found: image, query, response") and "\n" not in message
    assert info.value.hint


def test_truncated_parquet_file(tmp_path: Path, cache: Path) -> None:
    path = write_vqa(tmp_path / "train.parquet", [(png_bytes(), "a?", "yes")])
    path.write_bytes(path.read_bytes()[:-40])  # an interrupted copy
    with pytest.raises(DataError, match=rf"^{path}: not a readable parquet file"):
        load_records(spec(path), "train", cache_dir=cache)


def test_undecodable_image_names_its_row(tmp_path: Path, cache: Path) -> None:
    path = write_vqa(
        tmp_path / "train.parquet",
        [(png_bytes(), "a?", "yes"), (b"\x89PNG\r\n\x1a\n truncated", "b?", "no"),
         (png_bytes(), "c?", "no")],
    )  # fmt: skip
    with pytest.raises(DataError, match=rf"^{path}:2: image in column 'image' is unreadable"):
        load_records(spec(path), "train", cache_dir=cache)
    loaded = read_dataset(spec(path), "train", cache_dir=cache, collect=True)
    assert [r.line for r in loaded.records] == [1, 3]
    assert [e.message.split(": ", 1)[0] for e in loaded.problems] == [f"{path}:2"]
    assert len(list((cache / "hf-images").iterdir())) == 1  # the bad bytes are not cached


# --------------------------------------------------------------------------- validate


def test_validate_reads_every_row(cli, tmp_path: Path) -> None:
    root = tmp_path / "vqa"
    good = png_bytes()
    write_vqa(
        root / "train-00000-of-00001.parquet",
        [(good, "a?", "yes"), (b"not an image", "b?", "no"), (good, "c?", "lung"),
         (good, "d?", "")],
    )  # fmt: skip
    write_vqa(root / "test-00000-of-00001.parquet", [(good, "e?", "no"), (b"", "f?", "yes")])
    before = tree(root)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  datasets:\n    - path: {root}\n")
    result = cli("validate", recipe, "--format", "json")
    assert result.code == 1, result.err
    out = json.loads(result.out)
    train, test = root / "train-00000-of-00001.parquet", root / "test-00000-of-00001.parquet"
    assert [p["where"] for p in out["problems"]] == [f"{train}:2", f"{train}:4", f"{test}:2"]
    assert "unreadable or corrupt" in out["problems"][0]["problem"]
    assert "'answer'" in out["problems"][1]["problem"]
    assert "not found" in out["problems"][2]["problem"]  # no bytes: the path is tried
    assert [(d["split"], d["records"]) for d in out["datasets"]] == [("train", 2), ("eval", 1)]
    assert tree(root) == before

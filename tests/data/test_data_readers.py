"""Readers of common layouts, each on a small fixture written here (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import spec, write_jsonl, write_png

from medqwen_cli.data import detect_format, load_records, read_dataset
from medqwen_cli.errors import DataError

# --------------------------------------------------------------------------- LLaVA / messages


def test_llava_conversations_become_one_record_per_turn(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "images" / "x.png")
    items = [
        {
            "id": "case1",
            "image": "images/x.png",
            "conversations": [
                {"from": "human", "value": "<image>\nIs there an effusion?"},
                {"from": "gpt", "value": "No"},
                {"from": "human", "value": "Describe the image."},
                {"from": "gpt", "value": "A chest radiograph."},
            ],
        },
        {
            "id": "case2",
            "images": ["images/x.png"],
            "conversations": [
                {"from": "system", "value": "You are a radiologist."},
                {"from": "human", "value": "What organ is shown?\n<image>"},
                {"from": "gpt", "value": "lung"},
            ],
        },
    ]
    text = json.dumps(items, indent=2)
    (tmp_path / "train.json").write_text(text, encoding="utf-8")
    second = text.splitlines().index('    "id": "case2",')  # 0-based line of the id = the "{" line
    assert detect_format(tmp_path / "train.json") == "llava"
    records = load_records(spec(tmp_path), "train", cache_dir=cache)
    assert [r.id for r in records] == ["case1#0", "case1#1", "case2"]
    assert records[0].question == "Is there an effusion?"
    assert records[0].type == "vqa_closed" and records[0].answer == "no"
    assert records[1].type == "vqa_open" and records[1].images == records[0].images
    assert records[2].question == "What organ is shown?"
    assert [r.line for r in records] == [2, 2, second]  # the line where each item starts


def test_llava_errors(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "x.png")
    unanswered = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>Q?"}]}
    write_jsonl(tmp_path / "train.jsonl", [unanswered])
    with pytest.raises(DataError, match=r"train\.jsonl:1: .*no assistant answer"):
        load_records(spec(tmp_path), "train", cache_dir=cache)
    two_placeholders = {
        "image": "x.png",
        "conversations": [
            {"from": "human", "value": "<image><image>Q?"},
            {"from": "gpt", "value": "A"},
        ],
    }
    write_jsonl(tmp_path / "train.jsonl", [two_placeholders])
    with pytest.raises(DataError, match="2 <image> placeholders but 1 images"):
        load_records(spec(tmp_path), "train", cache_dir=cache)


def test_openai_messages(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    items = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "a.png"},
                        {"type": "image_url", "image_url": {"url": "file://b.png"}},
                        {"type": "text", "text": "Compare the two images."},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "They match."}]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "<image>Is it normal?"},
                {"role": "assistant", "content": "yes"},
            ],
            "images": ["a.png"],
        },
    ]
    write_jsonl(tmp_path / "train.jsonl", items)
    records = load_records(spec(tmp_path, format="messages"), "train", cache_dir=cache)
    assert len(records[0].images) == 2 and records[0].answer == "They match."
    assert records[1].question == "Is it normal?" and records[1].type == "vqa_closed"
    assert detect_format(tmp_path / "train.jsonl") == "messages"


# --------------------------------------------------------------------------- VQA benchmarks


def test_vqa_rad_splits_by_phrase_type(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "VQA_RAD Image Folder"
    write_png(folder / "synpic1.jpg".replace(".jpg", ".png"))
    items = [
        {
            "qid": 1,
            "image_name": "synpic1.png",
            "image_organ": "CHEST",
            "question": "Is there a mass?",
            "answer": "Yes",
            "answer_type": "CLOSED",
            "phrase_type": "freeform",
        },
        {
            "qid": 2,
            "image_name": "synpic1.png",
            "image_organ": "CHEST",
            "question": "Which side?",
            "answer": "left",
            "answer_type": "CLOSED ",
            "phrase_type": "para",
        },
        {
            "qid": 3,
            "image_name": "synpic1.png",
            "image_organ": "CHEST",
            "question": "What organ?",
            "answer": "lung",
            "answer_type": "OPEN",
            "phrase_type": "test_freeform",
        },
        {
            "qid": 4,
            "image_name": "synpic1.png",
            "image_organ": "CHEST",
            "question": "Abnormal?",
            "answer": "no",
            "answer_type": "OPEN",
            "phrase_type": "test_para",
        },
    ]
    path = tmp_path / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    assert detect_format(path) == "vqa_rad"
    train = load_records(spec(path), "train", cache_dir=cache)
    test = load_records(spec(path), "eval", cache_dir=cache)
    assert [r.id for r in train] == ["vqa_rad-1", "vqa_rad-2"]
    assert [r.type for r in train] == ["vqa_closed", "vqa_closed"]
    assert train[0].answer == "yes" and train[0].labels == ["yes", "no"]
    assert train[1].labels is None  # a closed question that is not yes/no
    assert [r.type for r in test] == ["vqa_open", "vqa_closed"]  # yes/no answers are closed
    assert test[0].meta == {"organ": "CHEST"}


def test_slake_layout(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "imgs" / "xmlab1" / "source.png")
    item = {
        "img_id": 1,
        "img_name": "xmlab1/source.png",
        "question": "Which organ?",
        "answer": "Liver",
        "q_lang": "en",
        "location": "Abdomen",
        "modality": "CT",
        "answer_type": "OPEN",
        "qid": 7,
    }
    (tmp_path / "train.json").write_text(json.dumps([item]), encoding="utf-8")
    (tmp_path / "test.json").write_text(
        json.dumps([{**item, "qid": 8, "answer": "Yes", "answer_type": "CLOSED"}]), encoding="utf-8"
    )
    (tmp_path / "validate.json").write_text(json.dumps([{**item, "qid": 9}]), encoding="utf-8")
    train = load_records(spec(tmp_path), "train", cache_dir=cache)
    evaluation = load_records(spec(tmp_path), "eval", cache_dir=cache)
    assert train[0].id == "slake-7" and train[0].type == "vqa_open"
    assert train[0].meta == {"lang": "en", "modality": "CT"}
    assert train[0].images == [str((tmp_path / "imgs" / "xmlab1" / "source.png").resolve())]
    assert evaluation[0].id == "slake-8" and evaluation[0].type == "vqa_closed"


def test_pathvqa_layout_with_bare_image_ids(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "images" / "train" / "train_0001.png")
    items = [
        {"image": "train_0001", "question": "Is this necrosis?", "answer": "no"},
        {"image": "train_0001", "question": "What is present?", "answer": "granuloma"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(items), encoding="utf-8")
    assert detect_format(tmp_path / "train.json") == "pathvqa"
    records = load_records(spec(tmp_path), "train", cache_dir=cache)
    assert [r.type for r in records] == ["vqa_closed", "vqa_open"]
    assert records[0].images[0].endswith("images/train/train_0001.png")


@pytest.mark.parametrize("name", ["train.jsonl", "train.json"])
def test_native_records_with_a_single_image_key_stay_native(
    tmp_path: Path, cache: Path, name: str
) -> None:
    """image/question/answer are PathVQA's keys too: `labels`, `task` or `meta` make it native
    (read as PathVQA, the label set, task and meta were silently dropped)."""
    write_png(tmp_path / "a.png")
    items = [
        {"id": "c1", "image": "a.png", "question": "Organ?", "answer": "lung",
         "labels": ["lung", "heart"], "task": "organs", "meta": {"site": "x"}},
        {"id": "c2", "image": "a.png", "question": "Normal?", "answer": "yes"},
    ]  # fmt: skip
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    else:
        path.write_text(json.dumps(items), encoding="utf-8")
    assert detect_format(path) == "jsonl"
    first, second = load_records(spec(path), "train", cache_dir=cache)
    assert (first.id, first.type, first.labels) == ("c1", "classification", ["lung", "heart"])
    assert (first.task, first.meta) == ("organs", {"site": "x"})
    assert (second.id, second.type) == ("c2", "vqa_closed")


def test_vqa_missing_image(tmp_path: Path, cache: Path) -> None:
    items = [{"image": "nope", "question": "Q?", "answer": "a"}]
    (tmp_path / "train.json").write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.json:1: image in field 'image' not found"):
        load_records(spec(tmp_path, format="pathvqa"), "train", cache_dir=cache)


# --------------------------------------------------------------------------- MedMNIST


def _medmnist(path: Path, n: int = 6, classes: int = 2, color: bool = False) -> None:
    rng = np.random.default_rng(0)
    shape = (n, 28, 28, 3) if color else (n, 28, 28)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1)
    np.savez(path, **arrays)


def test_medmnist_known_names_splits_and_png_cache(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "pneumoniamnist.npz"
    _medmnist(path)
    loaded = read_dataset(spec(path), "train", cache_dir=cache)
    records = loaded.records
    assert loaded.format == "medmnist" and loaded.warnings == []
    assert len(records) == 6 and records[1].answer == "pneumonia"
    assert records[0].labels == ["normal", "pneumonia"] and records[0].type == "classification"
    image = Path(records[0].images[0])
    assert image.is_file() and cache in image.parents
    from PIL import Image

    with Image.open(image) as im:
        assert im.size == (28, 28)
    assert len(load_records(spec(path), "eval", cache_dir=cache)) == 6  # eval -> test arrays
    again = load_records(spec(path), "train", cache_dir=cache)  # cached PNGs reused
    assert again[0].images == records[0].images


def test_medmnist_sidecar_names_multilabel_and_fallback(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "mine.npz"
    _medmnist(path, classes=3, color=True)
    (tmp_path / "mine.json").write_text(json.dumps({"label": {"0": "a", "1": "b", "2": "c"}}))
    assert load_records(spec(path), "train", cache_dir=cache)[2].answer == "c"
    (tmp_path / "mine.json").unlink()
    loaded = read_dataset(spec(path), "train", cache_dir=cache)
    assert loaded.records[0].labels == ["class 0", "class 1", "class 2"]
    assert "no class names" in loaded.warnings[0]
    multi = tmp_path / "multi.npz"
    labels = np.array([[1, 0, 1], [0, 0, 0]])
    np.savez(
        multi,
        train_images=np.zeros((2, 28, 28), np.uint8),
        train_labels=labels,
        label_names=np.array(["x", "y", "z"]),
    )
    records = load_records(spec(multi), "train", cache_dir=cache)
    assert [r.answer for r in records] == ["x, z", "no finding"] and records[0].type == "vqa_open"


def test_medmnist_bad_files(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_records(spec(path), "train", cache_dir=cache)
    np.savez(
        path,
        train_images=np.zeros((2, 28, 28), np.uint8),
        train_labels=np.array([0, 5]),
        label_names=np.array(["a", "b"]),
    )
    with pytest.raises(DataError, match=r"broken\.npz:2: train_labels holds class 5"):
        load_records(spec(path), "train", cache_dir=cache)
    with pytest.raises(DataError, match="no split 'eval'"):
        load_records(spec(path), "eval", cache_dir=cache)


# --------------------------------------------------------------------------- CSV


def test_csv_reports(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "img" / "1.png")
    write_png(tmp_path / "img" / "2.png")
    (tmp_path / "reports.csv").write_text(
        'Image,Report\nimg/1.png,"Lungs clear.\nNo effusion."\nimg/1.png;img/2.png,Stable.\n',
        encoding="utf-8",
    )
    records = load_records(spec(tmp_path), "train", cache_dir=cache)
    assert [r.type for r in records] == ["report", "report"]
    assert records[0].answer == "Lungs clear.\nNo effusion." and records[0].line == 2
    assert records[1].line == 4 and len(records[1].images) == 2
    assert records[0].question == "Write the findings report for this image."


def test_csv_errors(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "1.png")
    path = tmp_path / "train.csv"
    path.write_text("path,findings\n1.png,ok\n1.png,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:3: field 'answer' is missing"):
        load_records(spec(tmp_path), "train", cache_dir=cache)
    path.write_text("picture,words\n1.png,ok\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv:1: CSV header needs an image column"):
        load_records(spec(tmp_path), "train", cache_dir=cache)


def test_csv_with_dicom_images(tmp_path: Path, cache: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "train.csv").write_text("image,report\nct.dcm,Normal CT.\n", encoding="utf-8")
    records = load_records(spec(tmp_path), "train", cache_dir=cache)
    png = Path(records[0].images[0])
    assert png.suffix == ".png" and (cache / "dicom-png") in png.parents


# --------------------------------------------------------------------------- DICOM folder


def test_dicom_folder_records(tmp_path: Path, cache: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    data = tmp_path / "dicoms"
    (data / "series").mkdir(parents=True)
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), data / "ct.dcm")
    shutil.copy(pydicom_data.get_testdata_file("emri_small.dcm"), data / "series" / "mr.dcm")
    records = load_records(spec(data), "train", cache_dir=cache)
    assert detect_format(data) == "dicom"
    by_id = {r.id: r for r in records}
    assert by_id["ct-modality"].answer == "CT" and by_id["ct-modality"].type == "classification"
    assert by_id["series/mr-modality"].answer == "MRI"
    assert by_id["series/mr-bodypart"].answer == "head"
    assert by_id["series/mr-modality"].line == 6  # the middle frame of 10
    every = load_records(spec(data), "train", cache_dir=cache, dicom_frames="all")
    assert sum(r.id.startswith("series/mr-f") and r.id.endswith("-modality") for r in every) == 10


@pytest.mark.parametrize(
    ("keep", "expected"),
    [(100, "not a readable DICOM file"), (1000, "has no pixel data"), (-500, "cannot decode")],
    ids=["header", "no-pixels", "truncated-pixels"],
)
def test_dicom_folder_corrupt_file(tmp_path: Path, cache: Path, keep: int, expected: str) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    data = Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "bad.dcm").write_bytes(data[:keep])
    with pytest.raises(DataError, match=rf"bad\.dcm: .*{expected}"):
        load_records(spec(tmp_path), "train", cache_dir=cache)


# --------------------------------------------------------------------------- locating


def test_directory_with_several_files_and_no_split(tmp_path: Path, cache: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}])
    write_jsonl(tmp_path / "b.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="no file for split 'train' and 2 data files"):
        load_records(spec(tmp_path), "train", cache_dir=cache)


def test_missing_path_and_unknown_builtin(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match="dataset path not found"):
        load_records(spec(tmp_path / "nope"), "train", cache_dir=cache)
    with pytest.raises(DataError, match="unknown built-in task"):
        load_records(spec("builtin:nope"), "train", cache_dir=cache)


# --------------------------------------------------------------------------- collect mode


def test_collect_mode_lists_every_bad_record_of_each_reader(tmp_path: Path, cache: Path) -> None:
    """`read_dataset(collect=True)` (medqwen validate) reads on past a bad record, in every
    reader, and keeps the good ones; the default mode still raises the first."""
    write_png(tmp_path / "csv" / "1.png")
    (tmp_path / "csv" / "train.csv").write_text(
        "image,report\n1.png,ok\nmissing.png,text\n1.png,\n1.png,fine\n", encoding="utf-8"
    )
    loaded = read_dataset(spec(tmp_path / "csv"), "train", cache_dir=cache, collect=True)
    assert len(loaded.records) == 2
    assert [str(e.message).split(": ", 1)[0][-5:] for e in loaded.problems] == ["csv:3", "csv:4"]
    write_png(tmp_path / "vqa" / "images" / "a.png")
    items = [
        {"image": "a", "question": "Q?", "answer": "yes"},
        {"image": "b", "question": "Q?", "answer": "yes"},
        "not an object",
        {"question": "Q?", "answer": "no"},
    ]
    (tmp_path / "vqa" / "train.json").write_text(json.dumps(items, indent=1), encoding="utf-8")
    vqa = read_dataset(spec(tmp_path / "vqa", format="pathvqa"), "train", cache_dir=cache,
                       collect=True)  # fmt: skip
    assert len(vqa.records) == 1 and len(vqa.problems) == 3
    with pytest.raises(DataError, match="not found"):
        read_dataset(spec(tmp_path / "vqa", format="pathvqa"), "train", cache_dir=cache)
    missing = read_dataset(spec(tmp_path / "nowhere"), "train", cache_dir=cache, collect=True)
    assert missing.records == [] and "dataset path not found" in missing.problems[0].message

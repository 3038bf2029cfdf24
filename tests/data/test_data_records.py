"""Native JSONL records: schema, inference, and every bad input as a one-line DataError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import spec, write_jsonl, write_png

from medqwen_cli.data import Record, load_records, read_dataset
from medqwen_cli.errors import DataError


def _good(**extra):
    return {
        "id": "a",
        "images": ["img/a.png"],
        "question": "Is there a nodule?",
        "answer": "yes",
        **extra,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "b.png")
    return tmp_path


def _load(path: Path, cache: Path, **kwargs) -> list[Record]:
    return load_records(spec(path, **kwargs), "train", cache_dir=cache)


def test_native_jsonl_resolves_images_and_infers_types(dataset: Path, cache: Path) -> None:
    write_jsonl(
        dataset / "train.jsonl",
        [
            _good(),
            {"images": "img/b.png", "question": "What is shown?", "answer": "a nodule"},
            {
                "image": "img/a.png",
                "question": "Class?",
                "label": "Normal",
                "labels": ["normal", "nodule"],
            },
            {"type": "report", "images": [], "question": "Report.", "answer": "Clear lungs."},
        ],
    )
    records = _load(dataset, cache)
    assert [r.type for r in records] == ["vqa_closed", "vqa_open", "classification", "report"]
    first = records[0]
    assert first.images == [str((dataset / "img" / "a.png").resolve())]
    assert first.labels == ["yes", "no"] and first.answer == "yes"
    assert first.source == str(dataset / "train.jsonl") and first.line == 1
    assert records[1].id == "train-2"  # default id from file and line
    assert records[2].answer == "normal"  # canonical spelling of the label
    assert all(r.task == dataset.name for r in records)  # the dataset's display name


def test_forced_task_type_and_inferred_label_set(dataset: Path, cache: Path) -> None:
    write_jsonl(
        dataset / "train.jsonl",
        [
            {"images": ["img/a.png"], "question": "Class?", "answer": "cat"},
            {"images": ["img/b.png"], "question": "Class?", "answer": "dog"},
        ],
    )
    records = _load(dataset, cache, task_type="classification")
    assert {r.type for r in records} == {"classification"}
    assert records[0].labels == ["cat", "dog"]


def test_max_samples_keeps_the_first_records(dataset: Path, cache: Path) -> None:
    write_jsonl(dataset / "train.jsonl", [_good(id=str(i)) for i in range(5)])
    assert [r.id for r in _load(dataset, cache, max_samples=2)] == ["0", "1"]


BAD_LINES = [
    ("malformed", "{not json", "malformed JSON"),
    ("no answer", json.dumps({"images": ["img/a.png"], "question": "Q?"}), "'answer' is missing"),
    ("empty answer", json.dumps({"question": "Q?", "answer": "  "}), "'answer' is missing"),
    (
        "unknown type",
        json.dumps({"type": "segmentation", "question": "Q?", "answer": "x"}),
        "unknown task type",
    ),
    (
        "label outside set",
        json.dumps(
            {"type": "classification", "question": "Q?", "answer": "cat", "labels": ["dog"]}
        ),
        "not in the label set",
    ),
    (
        "missing image",
        json.dumps({"images": ["img/none.png"], "question": "Q?", "answer": "x"}),
        "in field 'images' not found",
    ),
    (
        "missing single image",
        json.dumps({"image": "img/none.png", "question": "Q?", "answer": "x"}),
        "in field 'image' not found",
    ),
    ("unknown key", json.dumps({"question": "Q?", "anwser": "x"}), "did you mean 'answer'"),
    ("not an object", json.dumps(["a", "b"]), "expected a JSON object"),
    (
        "pope not yes/no",
        json.dumps({"type": "pope", "question": "Q?", "answer": "maybe"}),
        "yes or no",
    ),
]


@pytest.mark.parametrize(("case", "line", "expected"), BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_record_names_file_and_line(
    dataset: Path, cache: Path, case: str, line: str, expected: str
) -> None:
    path = dataset / "train.jsonl"
    path.write_text(json.dumps(_good()) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _load(dataset, cache)
    message = info.value.message
    assert message.startswith(f"{path}:3: "), message
    assert expected in str(info.value)  # message or hint
    assert "\n" not in message
    assert "nodule" not in message  # record content never appears in messages


def test_non_utf8_line(dataset: Path, cache: Path) -> None:
    path = dataset / "train.jsonl"
    path.write_bytes(
        json.dumps(_good()).encode() + b"\n" + b'{"question": "caf\xe9", "answer": "x"}\n'
    )
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid UTF-8"):
        _load(dataset, cache)


def test_empty_dataset(dataset: Path, cache: Path) -> None:
    (dataset / "train.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        _load(dataset, cache)


def test_duplicate_ids(dataset: Path, cache: Path) -> None:
    write_jsonl(dataset / "train.jsonl", [_good(), _good()])
    with pytest.raises(DataError, match=r"train\.jsonl:2: duplicate id \(first used at line 1\)"):
        _load(dataset, cache)


def test_record_model_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        Record(
            id="x",
            type="vqa_open",
            images=["relative.png"],
            question="q",
            answer="a",
            source="f",
            line=1,
        )
    with pytest.raises(ValueError):
        Record(
            id="x",
            type="classification",
            question="q",
            answer="a",
            labels=["b"],
            source="f",
            line=1,
        )
    with pytest.raises(ValueError):
        Record(id="x", type="vqa_open", question="q", answer="a", source="f", line=1, extra=1)


def test_split_files_and_single_file_rules(dataset: Path, cache: Path) -> None:
    write_jsonl(dataset / "train.jsonl", [_good()])
    write_jsonl(dataset / "test.jsonl", [_good(id="t")])
    # "eval" falls back to test.jsonl
    assert [r.id for r in load_records(spec(dataset), "eval", cache_dir=cache)] == ["t"]
    # a single file serves the training split only
    with pytest.raises(DataError, match="has no split 'eval'"):
        load_records(spec(dataset / "train.jsonl"), "eval", cache_dir=cache)


def test_read_dataset_reports_format_and_path(dataset: Path, cache: Path) -> None:
    write_jsonl(dataset / "train.jsonl", [_good()])
    loaded = read_dataset(spec(dataset), "train", cache_dir=cache)
    assert loaded.format == "jsonl" and loaded.path == dataset / "train.jsonl"
    assert loaded.warnings == []


def test_native_jsonl_may_mix_in_chat_lines(dataset: Path, cache: Path) -> None:
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": "img/a.png"},
                    {"type": "text", "text": "Organ?"},
                ],
            },
            {"role": "assistant", "content": "lung"},
        ]
    }
    write_jsonl(dataset / "train.jsonl", [_good(), chat])
    records = _load(dataset, cache)
    assert [r.answer for r in records] == ["yes", "lung"] and records[1].id == "train-2"


def test_json_array_errors_name_the_line(dataset: Path, cache: Path) -> None:
    path = dataset / "train.json"
    path.write_text(
        '[\n  {"question": "q", "answer": "a"},\n  {"question": "q" "answer": "a"}\n]\n'
    )
    with pytest.raises(DataError, match=r"train\.json:3: malformed JSON"):
        _load(dataset, cache)
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "r", "answer": "b"}\n')
    assert [r.line for r in _load(dataset, cache)] == [1, 2]  # JSON lines in a .json file
    path.write_text('{"data": []}')
    with pytest.raises(DataError, match="expected a JSON array"):
        _load(dataset, cache)


def test_questions_without_answers_only_where_asked(dataset: Path, cache: Path) -> None:
    """`answer_optional` (predict): the type and candidates follow `type`/`labels`; the reading
    train and evaluate do still refuses a record without an answer."""
    asked = [
        {"id": "open", "images": ["img/a.png"], "question": "Q?"},
        {"id": "closed", "type": "vqa_closed", "question": "Q?"},
        {"id": "pope", "type": "pope", "question": "Q?"},
        {"id": "cls", "question": "Q?", "labels": ["cat", "dog"]},
        {"id": "given", "question": "Q?", "answer": "no"},
    ]
    write_jsonl(dataset / "train.jsonl", asked)
    loaded = read_dataset(spec(dataset), "train", cache_dir=cache, answer_optional=True).records
    kinds = {r.id: (r.type, r.labels) for r in loaded}
    assert kinds == {
        "open": ("vqa_open", None),
        "closed": ("vqa_closed", ["yes", "no"]),
        "pope": ("pope", ["yes", "no"]),
        "cls": ("classification", ["cat", "dog"]),
        "given": ("vqa_closed", ["yes", "no"]),
    }
    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'answer' is missing"):
        _load(dataset, cache)
    write_jsonl(dataset / "train.jsonl", [{"question": "Q?", "answer": " "}])  # given but empty
    with pytest.raises(DataError, match="'answer' is missing"):
        read_dataset(spec(dataset), "train", cache_dir=cache, answer_optional=True)

"""`medqwen predict` end to end on a tiny bundle: answers, formats, read-only, errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from medqwen_cli.bundle import Bundle

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes/debug/tiny.yaml")
KEYS = {"id", "images", "prediction", "scoring", "scores"}
QUESTION = "Is there a pleural effusion on the left?"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """init-experts (v0001), then v0002 with perturbed adapters (a version that differs)."""
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    root = tmp_path_factory.mktemp("predict") / "B"
    init_experts(load_recipe(TINY, ["eval.max_new_tokens=4"]), root)
    opened = Bundle.open(root)
    g = torch.Generator().manual_seed(0)
    adapter = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in opened.read_adapter().items()}  # fmt: skip
    opened.append_version(adapter, command="test", tasks=["xray"], recipe=opened.manifest.recipe)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small PNGs and a dataset of three records about them (closed, open, classification)."""
    root = tmp_path_factory.mktemp("predict-data")
    for i, shade in enumerate((40, 120, 200)):
        Image.new("RGB", (112, 84), (shade, shade // 2, 255 - shade)).save(root / f"scan{i}.png")
    records = [
        {"id": "r1", "type": "vqa_closed", "image": "scan0.png", "question": QUESTION, "answer": "no"},
        {"id": "r2", "type": "vqa_open", "image": "scan1.png", "question": "Describe it.", "answer": "x"},
        {"id": "r3", "type": "classification", "image": "scan2.png", "question": "Organ?",
         "answer": "lung", "labels": ["lung", "heart", "liver"]},
    ]  # fmt: skip
    (root / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    questions = [  # new cases: nothing to score against
        {"image": "scan0.png", "question": "Describe it."},
        {"id": "q2", "type": "vqa_closed", "image": "scan1.png", "question": QUESTION},
        {"image": "scan2.png", "question": "Organ?", "labels": ["lung", "heart", "liver"]},
    ]
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    chat = {"image": "scan0.png", "conversations": [{"from": "human", "value": "<image>Q?"}]}
    (root / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    (root / "broken.png").write_bytes(b"not an image")
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file of the bundle: (sha256, mtime_ns)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_answers_formats_and_the_bundle_is_only_read(cli, bundle: Path, images: Path) -> None:
    before = _snapshot(bundle)
    versions = Bundle.open(bundle).manifest.versions

    one = cli("predict", bundle, "--image", images / "scan0.png", "--question", QUESTION)
    assert one.code == 0, one.err
    (line,) = _lines(one.out)  # not a terminal: JSON lines
    assert set(line) == KEYS and line["id"] == "scan0"
    assert line["images"] == [str(images / "scan0.png")]  # the path as given
    assert line["scoring"] == "generate" and line["scores"] is None
    assert "v0002: 1 answer" in one.err and QUESTION not in one.err  # no record text in logs

    choices = ["yes", "no", "maybe"]
    scored = cli("predict", bundle, "-i", images / "scan1.png", "-q", QUESTION,
                 *(a for c in choices for a in ("--choices", c)), "--version", "v1", "-f", "json")  # fmt: skip
    assert scored.code == 0, scored.err
    (line,) = _lines(scored.out)
    assert line["prediction"] in choices and line["scoring"] == "likelihood"
    assert list(line["scores"]) == choices and sum(line["scores"].values()) == pytest.approx(1)
    assert line["prediction"] == max(line["scores"], key=line["scores"].get)
    assert "v0001: 1 answer" in scored.err

    data = cli("predict", bundle, "--data", images / "cases.jsonl")
    assert data.code == 0, data.err
    lines = _lines(data.out)
    assert [x["id"] for x in lines] == ["r1", "r2", "r3"]  # one line per record, in file order
    assert [x["scoring"] for x in lines] == ["likelihood", "generate", "likelihood"]
    assert set(lines[0]["scores"]) == {"yes", "no"}  # a closed record's own candidates
    assert set(lines[2]["scores"]) == {"lung", "heart", "liver"}
    assert lines[1]["images"] == [str(images / "scan1.png")]

    table = cli("predict", bundle, "--data", images / "cases.jsonl", "-c", "left", "-c", "right",
                "--base-only", "-f", "csv")  # fmt: skip
    assert table.code == 0, table.err
    rows = list(csv.DictReader(io.StringIO(table.out)))
    assert list(rows[0]) == ["id", "images", "prediction", "scoring", "p(left)", "p(right)"]
    assert [r["id"] for r in rows] == ["r1", "r2", "r3"]
    for row in rows:
        assert row["prediction"] in ("left", "right")
        assert float(row["p(left)"]) + float(row["p(right)"]) == pytest.approx(1)
    assert "base: 3 answers" in table.err

    asked = cli("predict", bundle, "--data", images / "questions.jsonl", "-f", "json")
    assert asked.code == 0, asked.err
    lines = _lines(asked.out)
    assert [x["id"] for x in lines] == ["questions-1", "q2", "questions-3"]
    assert [x["scoring"] for x in lines] == ["generate", "likelihood", "likelihood"]
    assert set(lines[1]["scores"]) == {"yes", "no"}
    assert set(lines[2]["scores"]) == {"lung", "heart", "liver"}

    assert _snapshot(bundle) == before  # no evals.jsonl line, no version, no lock, no work dir
    assert Bundle.open(bundle).manifest.versions == versions


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--image", "{d}/missing.png", "--question", "q"], "{d}/missing.png: not found"),
        (["--image", "{d}/broken.png", "--question", "q"], "unreadable or corrupt"),
        (["--data", "{d}/missing.jsonl"], "{d}/missing.jsonl: not found"),
        (["--data", "{d}/chat.jsonl"], "only native JSONL/JSON records"),
        ([], "nothing to answer"),
        (["--image", "{d}/scan0.png", "--question", "q", "--data", "{d}/cases.jsonl"], "both"),
        (["--data", "{d}/cases.jsonl", "--question", "q"], "--question needs --image"),
        (["--image", "{d}/scan0.png"], "--image needs a non-empty --question"),
        (["--image", "{d}/scan0.png", "--question", "q", "--choices", " "], "--choices is empty"),
        (["--image", "{d}/scan0.png", "--question", "q", "--version", "v9"], "no version v0009"),
        (["--image", "{d}/scan0.png", "--question", "q", "--version", "latest"], "bad version"),
    ],
)
def test_errors(cli, bundle: Path, images: Path, args: list[str], needle: str) -> None:
    result = cli("predict", bundle, *(a.format(d=images) for a in args))
    assert result.code == 1 and needle.format(d=images) in result.err, result.err
    assert "Error:" in result.err and "Hint:" in result.err and not result.out


def test_a_modified_version_is_refused(cli, bundle: Path, images: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    adapter = copy / "versions" / "v0002" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-8] + b"\0" * 8)
    result = cli("predict", copy, "--image", images / "scan0.png", "--question", "q")
    assert (
        result.code == 1
        and "checksum mismatch" in result.err
        and "adapter.safetensors" in result.err
    )


def test_a_usage_error_fails_before_torch_is_imported(bundle: Path) -> None:
    probe = (
        "import sys\n"
        "from medqwen_cli.cli.app import main\n"
        "try:\n"
        f"    main(['predict', {str(bundle)!r}, '--question', 'q'])\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, "MEDQWEN_DEBUG": ""}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.stdout.split() == ["1", "False", "False"], done.stderr
    assert "--question needs --image" in done.stderr

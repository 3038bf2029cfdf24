"""Image references: containment in the dataset root, corrupt files, oversized images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data_helpers import spec, write_jsonl, write_png

from medqwen_cli.data import load_records, read_dataset
from medqwen_cli.errors import DataError


def _one(tmp_path: Path, image: str) -> Path:
    root = tmp_path / "ds"
    write_jsonl(root / "train.jsonl", [{"images": [image], "question": "Q?", "answer": "a"}])
    return root


def test_dotdot_escape_is_refused(tmp_path: Path, cache: Path) -> None:
    write_png(tmp_path / "outside.png")
    root = _one(tmp_path, "../outside.png")
    with pytest.raises(
        DataError, match=r"train\.jsonl:1: image path .* leaves the dataset directory"
    ):
        load_records(spec(root), "train", cache_dir=cache)


def test_symlink_escape_is_refused(tmp_path: Path, cache: Path) -> None:
    outside = write_png(tmp_path / "secret" / "x.png")
    root = _one(tmp_path, "img/link.png")
    (root / "img").mkdir()
    os.symlink(outside, root / "img" / "link.png")
    with pytest.raises(DataError, match="leaves the dataset directory"):
        load_records(spec(root), "train", cache_dir=cache)


def test_symlink_inside_root_and_absolute_path_are_fine(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "ds"
    real = write_png(root / "img" / "real.png")
    os.symlink(real, root / "img" / "alias.png")
    elsewhere = write_png(tmp_path / "shared" / "y.png")
    write_jsonl(
        root / "train.jsonl",
        [{"images": ["img/alias.png", str(elsewhere)], "question": "Q?", "answer": "a"}],
    )
    record = load_records(spec(root), "train", cache_dir=cache)[0]
    assert record.images == [str(real.resolve()), str(elsewhere)]


@pytest.mark.parametrize(
    "content",
    [b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
    ids=["garbage", "truncated-png"],
)
def test_corrupt_image(tmp_path: Path, cache: Path, content: bytes) -> None:
    root = _one(tmp_path, "bad.png")
    (root / "bad.png").write_bytes(content)
    with pytest.raises(
        DataError, match=r"train\.jsonl:1: image in field 'images' is unreadable or corrupt"
    ):
        load_records(spec(root), "train", cache_dir=cache)


def test_large_image_is_a_warning_not_an_error(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "ds"
    write_png(root / "big.png", size=(200, 150))
    write_png(root / "small.png", size=(20, 20))
    write_jsonl(
        root / "train.jsonl",
        [
            {"images": ["big.png"], "question": "Q?", "answer": "a"},
            {"images": ["small.png"], "question": "Q?", "answer": "a"},
        ],
    )
    loaded = read_dataset(spec(root), "train", cache_dir=cache, max_image_pixels=100 * 100)
    assert len(loaded.records) == 2
    (warning,) = loaded.warnings
    assert "1 image larger than max_image_pixels=10000" in warning
    assert "200x150" in warning and "train.jsonl:1" in warning


def test_a_dataset_warning_is_logged_once_per_process(tmp_path: Path, cache: Path, caplog) -> None:
    root = tmp_path / "ds"
    write_png(root / "big.png", size=(200, 150))
    write_jsonl(root / "train.jsonl", [{"images": ["big.png"], "question": "Q?", "answer": "a"}])
    with caplog.at_level("WARNING", logger="medqwen_cli.data.readers"):
        for _ in range(3):  # e.g. each step of a run reading the same dataset
            load_records(spec(root), "train", cache_dir=cache, max_image_pixels=100 * 100)
    assert [r.getMessage()[:30] for r in caplog.records] == ["1 image larger than max_image_"]


def test_large_images_are_logged_once_per_dataset_and_never_for_built_in_data(
    tmp_path: Path, cache: Path, caplog
) -> None:
    from medqwen_cli.recipe import DatasetSpec

    root = tmp_path / "ds"
    write_png(root / "big.png", size=(200, 150))
    write_png(root / "wide.png", size=(300, 150))
    write_jsonl(root / "train.jsonl", [{"images": ["big.png"], "question": "Q?", "answer": "a"}])
    write_jsonl(root / "eval.jsonl", [{"images": ["wide.png"], "question": "Q?", "answer": "a"}])
    with caplog.at_level("WARNING", logger="medqwen_cli.data.readers"):
        for split in ("train", "eval", "train"):  # two splits, two messages: one line
            load_records(spec(root), split, cache_dir=cache, max_image_pixels=100 * 100)
        for split in ("train", "eval"):  # built-in images are larger than 56 x 56 by design
            load_records(DatasetSpec(path="builtin:xray"), split, cache_dir=cache,
                         max_image_pixels=56 * 56)  # fmt: skip
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("1 image larger than max_image_pixels=10000") and "train.jsonl" in line


def test_collator_downscales_large_images() -> None:
    from medqwen_cli.data.collate import fit_size

    assert fit_size(1000, 500, max_pixels=224 * 224) == (308, 140)
    assert fit_size(112, 112, max_pixels=224 * 224) == (112, 112)
    assert fit_size(20, 20, max_pixels=224 * 224) == (56, 56)  # up to the processor minimum
    for h, w in [(1955, 1841), (64, 1000), (3000, 3000)]:
        nh, nw = fit_size(h, w, max_pixels=224 * 224)
        assert nh % 28 == 0 and nw % 28 == 0 and nh * nw <= 224 * 224

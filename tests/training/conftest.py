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

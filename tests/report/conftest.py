"""A bundle with a zero-shot row and two tasks (the second watched: a forgetting curve), built
once per module from the tiny template; tests that write copy it first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

QUICK = ["train.max_steps=3", "eval.max_samples=8"]


@pytest.fixture(scope="module")
def reported_bundle(template_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medqwen_cli.evaluation.api import evaluate_bundle
    from medqwen_cli.training.run import continue_bundle

    root = tmp_path_factory.mktemp("report") / "bundle"
    shutil.copytree(template_bundle, root)
    evaluate_bundle(root, base_only=True, tasks=["xray", "ct"], overrides=QUICK)
    continue_bundle(root, task="xray", overrides=QUICK)
    continue_bundle(root, task="ct", overrides=QUICK, watch=["xray"], eval_every=1)
    return root


@pytest.fixture
def bundle_copy(reported_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(reported_bundle, target)
    return target

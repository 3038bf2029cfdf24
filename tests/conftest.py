"""Shared fixtures: an isolated cache (presets, built-in data) and in-process CLI runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Two cores shared by the suite's processes: one thread each avoids oversubscription, which made
# evaluation up to 30x slower under load (subprocesses inherit the variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


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

"""Adapter dropout follows train.seed: the same command gives the same adapters, every time."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from medqwen_cli.bundle import Bundle

# a v0001-only sslora bundle on the tiny preset (E=2, k=1, r=4), copied for each run
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle-format-1"
QUICK = ["--task", "builtin:xray", "--set", "train.max_steps=3", "--set", "train.batch_size=2"]


def _train(cli, root: Path, *overrides: str) -> dict[str, torch.Tensor]:
    shutil.copytree(FIXTURE, root)
    args = [arg for o in overrides for arg in ("--set", o)]
    result = cli("train", root, *QUICK, *args)
    assert result.code == 0, result.err
    return Bundle.open(root).read_adapter("v0002")


def test_dropout_runs_repeat_exactly_and_dropout_acts(cli, tmp_path: Path) -> None:
    torch.manual_seed(123)  # whatever the process drew before must not matter
    first = _train(cli, tmp_path / "a", "adapter.dropout=0.3")
    torch.rand(7)
    again = _train(cli, tmp_path / "b", "adapter.dropout=0.3")
    plain = _train(cli, tmp_path / "c", "adapter.dropout=0.0")
    assert first.keys() == again.keys() == plain.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], plain[k]) for k in first)  # the masks changed the run

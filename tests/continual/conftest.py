"""Shared steps of the continual tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import TrainingError
from medqwen_cli.training.run import continue_bundle

QUICK = ["train.max_steps=3", "train.checkpoint_every=1000"]


@pytest.fixture
def crash_and_resume_on_ct(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nan_loss_at
):
    """`crash_and_resume_on_ct(overrides)`: xray, then ct with `overrides` twice: once straight
    through (a copy of the bundle) and once crashing at step 5 and resumed. Asserts both end in
    the same version with bit-identical adapters; returns the resumed run's adapter tensors."""

    def run(overrides: list[str]) -> dict[str, torch.Tensor]:
        continue_bundle(bundle_dir, task="xray", overrides=QUICK, evaluate=False)
        reference = tmp_path / "reference"
        shutil.copytree(bundle_dir, reference)
        want = continue_bundle(reference, task="ct", overrides=overrides, evaluate=False)
        nan_loss_at(5)
        with pytest.raises(TrainingError, match="step 5"):
            continue_bundle(bundle_dir, task="ct", overrides=overrides, evaluate=False)
        monkeypatch.undo()
        got = continue_bundle(bundle_dir, task="ct", overrides=overrides, evaluate=False)
        assert got.resumed_from == 4 and got.version == want.version
        a = Bundle.open(bundle_dir).read_adapter(got.version)
        b = Bundle.open(reference).read_adapter(want.version)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        return a

    return run


@pytest.fixture
def seen_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, str]]]:
    """(task, id) of the records of every collated training batch."""
    from medqwen_cli.data.collate import Collator

    seen: list[list[tuple[str, str]]] = []
    real = Collator.__call__

    def spy(self, records):
        seen.append([(r.task, r.id) for r in records])
        return real(self, records)

    monkeypatch.setattr(Collator, "__call__", spy)
    return seen

"""The loop: the answer-position loss, a non-finite loss, the step log."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import TrainingError
from medqwen_cli.training import loop as loop_mod
from medqwen_cli.training.checkpoint import Progress
from medqwen_cli.training.run import train_bundle


def test_loss_on_answer_positions_equals_the_full_logits_loss(bundle_dir: Path) -> None:
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.loading import load_adapted
    from medqwen_cli.modeling import cache_dir
    from medqwen_cli.recipe import DatasetSpec

    loaded = load_adapted(Bundle.open(bundle_dir), "v0001")
    records = load_records(
        DatasetSpec(path="builtin:xray"), "train", cache_dir=cache_dir() / "data",
        max_image_pixels=12544,
    )[:6]  # fmt: skip
    batch = Collator(loaded.processor, max_image_pixels=12544, max_length=512)(records)
    labels = batch.pop("labels")
    keep = loop_mod.answer_positions(labels)
    assert 0 < len(keep) < labels.shape[1] - 1  # the prompt positions are left out
    with torch.no_grad():
        full = loop_mod.token_loss_sum(loaded.model(**batch).logits, labels)
        kept = loop_mod.token_loss_sum(
            loaded.model(**batch, logits_to_keep=keep).logits, labels, keep
        )
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-4)


def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(
    bundle_dir: Path, monkeypatch, nan_loss_at
) -> None:
    nan_loss_at(5)  # the fixture patches through this test's monkeypatch: undo() restores
    with pytest.raises(TrainingError, match="loss became nan at step 5") as err:
        train_bundle(
            bundle_dir, tasks=["xray"], overrides=["train.checkpoint_every=2", "train.max_steps=8"]
        )
    assert "ckpt-000004" in err.value.hint
    b = Bundle.open(bundle_dir)
    assert b.head == "v0001" and len(b.manifest.versions) == 1
    assert sorted(p.name for p in next((b.root / "work").iterdir()).glob("ckpt-*")) == [
        "ckpt-000002",
        "ckpt-000004",
    ]
    monkeypatch.undo()
    resumed = train_bundle(
        bundle_dir, tasks=["xray"], overrides=["train.checkpoint_every=2", "train.max_steps=8"]
    )
    assert resumed.resumed_from == 4 and resumed.version == "v0002"


class _Main:
    """The accelerator as StepLogger sees it on a single process."""

    is_main_process = True

    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log(self, values: dict, step: int) -> None:
        self.logged.append((values, step))


def test_step_logger_writes_every_n_steps_and_the_last(tmp_path: Path) -> None:
    scheduler = SimpleNamespace(get_last_lr=lambda: [1e-3, 2e-3])
    accelerator = _Main()
    log = loop_mod.StepLogger(
        tmp_path / "log.jsonl", every=2, total=5, scheduler=scheduler, accelerator=accelerator
    )
    progress, stats = Progress(), []
    for step in range(1, 6):
        progress.step, progress.tokens = step, 10 * step
        stats.append(log(progress, loop_mod.StepStats(1.0 / step, 0.5, 10, 2)))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 5] and progress.log_lines == 3
    assert lines[0]["lr"] == 1e-3 and lines[0]["router_lr"] == 2e-3 and lines[0]["tokens"] == 20
    assert [s.get("logged", False) for s in stats] == [False, True, False, True, True]
    assert stats[0] == {"loss": 1.0, "balance_loss": 0.5}
    assert [step for _, step in accelerator.logged] == [2, 4, 5]
    before = log.elapsed()
    log.pause(100.0)  # the watch's time is left out
    assert log.elapsed() < before

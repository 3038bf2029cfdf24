"""Acceptance on a real conflict: a second task that flips the first one's answers, trained
without a strategy, fails `min_kept` on the tiny preset; the same criterion passes after a task
that agrees with the first (the control)."""

from __future__ import annotations

import json
from pathlib import Path

from medqwen_cli.bundle import Bundle
from medqwen_cli.training.run import continue_bundle

SETS = ["train.max_steps=40", "train.lr=0.01", "train.batch_size=4"]
KEEP = "acceptance.earlier_tasks.min_kept=0.95"


def _task(root: Path, flip: int) -> str:
    """Eight yes/no questions (eval = train); `flip` answers every one the other way."""
    root.mkdir(parents=True)
    lines = [
        {"id": f"q{i}", "type": "vqa_closed", "question": f"Is finding {i} present?",
         "answer": "yes" if (i % 2) ^ flip else "no", "labels": ["yes", "no"]}
        for i in range(8)
    ]  # fmt: skip
    for split in ("train", "eval"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(root.resolve())


def test_a_contradicting_task_fails_min_kept_and_the_control_passes(
    bundle_dir: Path, tmp_path: Path
) -> None:
    first = continue_bundle(bundle_dir, task=_task(tmp_path / "a", 0), overrides=SETS)
    learned = [e["value"] for e in first.evaluations if e.get("headline")]
    assert learned == [1.0]  # tiny learns the eight answers
    conflict = continue_bundle(
        bundle_dir, task=_task(tmp_path / "flipped", 1), overrides=[*SETS, KEEP]
    )
    verdict = conflict.acceptance
    assert verdict["status"] == "not accepted" and verdict["default_version"] == first.version
    (check,) = verdict["checks"]
    assert check["criterion"] == "min_kept" and check["measured"] < 0.5 and not check["passed"]
    bundle = Bundle.open(bundle_dir)
    assert bundle.manifest.head == conflict.version and bundle.head == first.version
    # the control: a task giving the same answers keeps the first one, and moves the default
    control = continue_bundle(bundle_dir, task=_task(tmp_path / "same", 0), overrides=[*SETS, KEEP])
    assert control.acceptance["status"] == "accepted", control.acceptance
    assert Bundle.open(bundle_dir).head == control.version

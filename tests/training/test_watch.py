"""`--watch`: forgetting curves scored while training, published with the version, inert."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import RecipeError, TrainingError
from medqwen_cli.forgetting import forgetting_report
from medqwen_cli.training.run import continue_bundle, train_bundle
from medqwen_cli.training.watch import CURVE_FILE, expected_steps

QUICK = ["train.checkpoint_every=1000", "eval.max_samples=2", "eval.batch_size=2"]


def step_rows(bundle: Path) -> list[dict]:
    return [r for r in Bundle.open(bundle).read_evals() if "step" in r]


def test_expected_steps() -> None:
    assert expected_steps(5, 2) == [0, 2, 4, 5]
    assert expected_steps(4, 2) == [0, 2, 4]
    assert expected_steps(3, 10) == [0, 3]


def test_points_at_every_n_steps_published_with_the_new_version(bundle_dir: Path) -> None:
    seen = []

    def during(points: list[dict]) -> None:  # called while training, before any publish
        seen.append([p["step"] for p in points])
        assert Bundle.open(bundle_dir).read_evals() == []
        assert list((bundle_dir / "work").glob(f"*/{CURVE_FILE}"))

    result = continue_bundle(
        bundle_dir, task="ct", watch=["xray"], eval_every=2, evaluate=False,
        overrides=[*QUICK, "train.max_steps=5"], curve_fn=during,
    )  # fmt: skip
    assert seen == [[0], [2], [4], [5]]
    assert result.version == "v0002"
    assert [(p["step"], p["steps"], p["task"], p["version"]) for p in result.curves] == [
        (k, 5, "xray", "v0002") for k in (0, 2, 4, 5)
    ]
    rows = step_rows(bundle_dir)
    assert {r["version"] for r in rows} == {"v0002"}
    headline = [r for r in rows if r["headline"]]
    assert [r["step"] for r in headline] == [0, 2, 4, 5]
    assert headline[-1]["value"] == result.curves[-1]["value"]
    assert all(r["eval_every"] == 2 and r["n"] >= 1 for r in rows)
    assert not (bundle_dir / "work").exists()  # the buffer went with the run's work directory

    # The points never fill the accuracy matrix: no cell without a step line.
    b = Bundle.open(bundle_dir)
    lineage = [(e.id, e.tasks) for e in b.lineage() if e.tasks]
    report = forgetting_report(b.read_evals(), lineage)
    assert all(v is None for row in report.matrix.values for v in row)
    ((curve),) = report.curves
    assert (curve.version, curve.task, [p.step for p in curve.points]) == (
        "v0002", "xray", [0, 2, 4, 5]
    )  # fmt: skip


def test_watch_does_not_change_training(bundle_dir: Path, tmp_path: Path) -> None:
    copies = [tmp_path / "watched", tmp_path / "reseeded"]
    for copy in copies:
        shutil.copytree(bundle_dir, copy)
    # dropout draws from the RNG; 4 eval records: answered by likelihood and by generation
    overrides = [*QUICK, "train.max_steps=3", "adapter.dropout=0.2", "eval.max_samples=4"]
    # train.seed seeds the dropout masks; the watch's scoring must not draw from that stream
    plain = train_bundle(bundle_dir, tasks=["xray"], overrides=overrides)
    torch.rand(3)  # nor may whatever the process drew in between
    watched = train_bundle(
        copies[0], tasks=["xray"], overrides=overrides, watch=["ct"], eval_every=1
    )
    reseeded = train_bundle(copies[1], tasks=["xray"], overrides=[*overrides, "train.seed=1"])
    assert [p["step"] for p in watched.curves] == [0, 1, 2, 3]
    assert watched.router_load == plain.router_load  # the eval forwards are not counted
    assert watched.final_loss == plain.final_loss != reseeded.final_loss  # the RNG matters
    a = Bundle.open(bundle_dir).read_adapter(plain.version)
    b = Bundle.open(copies[0]).read_adapter(watched.version)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resumed_run_keeps_earlier_points_and_scores_the_rest(
    bundle_dir: Path, monkeypatch, nan_loss_at
) -> None:
    overrides = ["train.checkpoint_every=3", "train.max_steps=6", *QUICK[1:]]
    nan_loss_at(6)
    first: list[int] = []
    with pytest.raises(TrainingError, match="step 6"):
        train_bundle(
            bundle_dir, tasks=["ct"], overrides=overrides, watch=["xray"], eval_every=1,
            curve_fn=lambda points: first.append(points[0]["step"]),
        )  # fmt: skip
    assert first == [0, 1, 2, 3, 4, 5]  # points 4 and 5 lie after the checkpoint (step 3)
    assert step_rows(bundle_dir) == []  # no version, so nothing in evals.jsonl
    monkeypatch.undo()

    second: list[int] = []
    result = train_bundle(
        bundle_dir, tasks=["ct"], overrides=overrides, watch=["xray"], eval_every=1,
        curve_fn=lambda points: second.append(points[0]["step"]),
    )  # fmt: skip
    assert result.resumed_from == 3
    assert second == [4, 5, 6]  # 0-3 kept from the first run, the rest scored again
    assert [p["step"] for p in result.curves] == list(range(7))
    headline = [r for r in step_rows(bundle_dir) if r["headline"]]
    assert [(r["step"], r["version"]) for r in headline] == [(k, "v0002") for k in range(7)]


def test_bad_watch_fails_before_training(bundle_dir: Path) -> None:
    with pytest.raises(RecipeError, match="cannot watch 'xary'"):
        continue_bundle(bundle_dir, task="ct", watch=["xary"], evaluate=False, overrides=QUICK)
    with pytest.raises(RecipeError, match="without a task to watch"):
        train_bundle(bundle_dir, tasks=["ct"], eval_every=5, overrides=QUICK)
    b = Bundle.open(bundle_dir)
    assert b.head == "v0001" and not (bundle_dir / "work").exists()

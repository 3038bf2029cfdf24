"""`continue`: each task of a sequence becomes a version and the forgetting matrix fills itself."""

from __future__ import annotations

from pathlib import Path

from medqwen_cli.bundle import Bundle
from medqwen_cli.forgetting import forgetting_report
from medqwen_cli.training.run import continue_bundle

QUICK = ["train.max_steps=2", "train.checkpoint_every=1000", "eval.max_samples=4"]


def test_continue_twice_fills_every_cell(bundle_dir: Path, monkeypatch) -> None:
    first = continue_bundle(bundle_dir, task="xray", overrides=QUICK)
    opened = []
    real_open = Bundle.open.__func__
    monkeypatch.setattr(
        Bundle, "open", classmethod(lambda cls, p=None: opened.append(p) or real_open(cls, p))
    )
    second = continue_bundle(bundle_dir, task="ct", overrides=QUICK)
    monkeypatch.undo()
    # one open for plan, parent's score, training, publish and the new version's scores
    assert opened == [bundle_dir]
    b = Bundle.open(bundle_dir)
    assert [(e.id, e.parent, e.tasks) for e in b.lineage()] == [
        ("v0001", None, []), ("v0002", "v0001", ["xray"]), ("v0003", "v0002", ["ct"]),
    ]  # fmt: skip
    cells = {(r["version"], r["task"]) for r in b.read_evals() if r["headline"]}
    # after each version every task seen so far; before training ct, the parent on ct (for FWT)
    assert cells == {("v0002", "xray"), ("v0002", "ct"), ("v0003", "xray"), ("v0003", "ct")}
    assert {(r["version"], r["task"]) for r in first.evaluations if r["headline"]} == {
        ("v0002", "xray")
    }
    assert {(r["version"], r["task"]) for r in second.evaluations if r["headline"]} == cells - {
        ("v0002", "xray")
    }
    lineage = [(e.id, e.tasks) for e in b.lineage() if e.tasks]
    report = forgetting_report(b.read_evals(), lineage, metric="headline_mean")
    assert report.bwt.value is not None and report.acc.value is not None


def test_no_eval_writes_no_evaluation(bundle_dir: Path) -> None:
    continue_bundle(bundle_dir, task="xray", overrides=QUICK, evaluate=False)
    assert Bundle.open(bundle_dir).read_evals() == []

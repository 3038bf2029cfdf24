"""Ctrl-C in each phase of a run, and the same command run again: nothing lost, nothing twice.

The phases: training (the loop resumes from its checkpoint), writing (before the version exists
a rerun resumes; after, it publishes what is left), evaluation (a rerun scores the cells left).
A finished command run again trains nothing; --again trains the task again.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import AlreadyTrained, DataError, Interrupted
from medqwen_cli.training.run import continue_bundle, train_bundle

QUICK = ["train.max_steps=3", "train.checkpoint_every=2", "eval.max_samples=2"]


def cells(bundle_dir: Path) -> Counter:
    """How many times evals.jsonl holds each (version, task) cell."""
    rows = Bundle.open(bundle_dir).read_evals()
    return Counter((r["version"], r["task"]) for r in rows if r["headline"] and "step" not in r)


def versions(bundle_dir: Path) -> list[tuple[str, list[str]]]:
    return [(e.id, e.tasks) for e in Bundle.open(bundle_dir).manifest.versions]


def test_ctrl_c_while_evaluating_then_the_same_command_scores_what_is_left(
    bundle_dir: Path, monkeypatch
) -> None:
    from medqwen_cli.evaluation import api

    continue_bundle(bundle_dir, task="xray", overrides=QUICK)  # v0002, scored on xray
    real = api.evaluate_bundle

    def ctrl_c_on_the_new_version(bundle, *, version=None, **kwargs):
        if version == "v0003":
            raise KeyboardInterrupt
        return real(bundle, version=version, **kwargs)

    monkeypatch.setattr(api, "evaluate_bundle", ctrl_c_on_the_new_version)
    command = "medqwen continue --task ct"
    with pytest.raises(Interrupted) as stopped:
        continue_bundle(bundle_dir, task="ct", overrides=QUICK, command=command)
    assert stopped.value.message == (
        "interrupted after v0003 was written (trained on ct from v0002); "
        "left: its evaluation on xray, ct"
    )
    assert stopped.value.hint == (
        f"rerun the same command to complete v0003 without training again: {command}"
    )
    assert cells(bundle_dir) == {("v0002", "xray"): 1, ("v0002", "ct"): 1}  # the parent's cell
    with pytest.raises(Interrupted) as again_stopped:  # the rerun stopped too: the same report
        continue_bundle(bundle_dir, task="ct", overrides=QUICK, command=command)
    assert again_stopped.value.message == stopped.value.message
    assert len(versions(bundle_dir)) == 3
    monkeypatch.undo()

    done = continue_bundle(bundle_dir, task="ct", overrides=QUICK)
    assert versions(bundle_dir)[-1] == ("v0003", ["ct"])  # no v0004
    assert (done.version, done.parent, done.tasks, done.steps) == ("v0003", "v0002", ["ct"], 3)
    assert done.notes[0].startswith(
        "v0003 already trained ct with this recipe; completed what its run left: its "
        "evaluation on xray, ct (nothing trained;"
    )
    want = {("v0002", "xray"): 1, ("v0002", "ct"): 1, ("v0003", "xray"): 1, ("v0003", "ct"): 1}
    assert cells(bundle_dir) == want
    shown = {(e["version"], e["task"]) for e in done.evaluations if e["headline"]}
    assert shown == set(want) - {("v0002", "xray")}  # as the uninterrupted run shows them

    again = continue_bundle(bundle_dir, task="ct", overrides=QUICK)  # finished: nothing to do
    assert again.version == "v0003" and "nothing left to do" in again.notes[0]
    assert cells(bundle_dir) == want and len(versions(bundle_dir)) == 3

    forced = continue_bundle(bundle_dir, task="ct", overrides=QUICK, again=True)
    assert (forced.version, forced.parent) == ("v0004", "v0003")
    assert cells(bundle_dir)[("v0004", "ct")] == 1


def test_ctrl_c_while_training_a_continue_then_the_rerun_resumes_and_scores_once(
    bundle_dir: Path, monkeypatch
) -> None:
    from medqwen_cli.training import loop as loop_mod

    continue_bundle(bundle_dir, task="xray", overrides=QUICK)
    real, calls = loop_mod.token_loss_sum, {"n": 0}

    def ctrl_c_in_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "token_loss_sum", ctrl_c_in_step_3)
    with pytest.raises(Interrupted, match="interrupted after step 2 of 3; the last checkpoint"):
        continue_bundle(bundle_dir, task="ct", overrides=QUICK)
    assert len(versions(bundle_dir)) == 2
    monkeypatch.undo()
    resumed = continue_bundle(bundle_dir, task="ct", overrides=QUICK)
    assert (resumed.version, resumed.resumed_from) == ("v0003", 2)
    assert set(cells(bundle_dir).values()) == {1} and len(cells(bundle_dir)) == 4


def test_ctrl_c_while_writing_before_the_version_exists_resumes(
    bundle_dir: Path, monkeypatch
) -> None:
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Bundle, "append_version", ctrl_c)
    with pytest.raises(Interrupted) as stopped:
        train_bundle(bundle_dir, tasks=["xray"], overrides=QUICK, command="medqwen train")
    assert stopped.value.message == (
        "interrupted before the version of xray was written: nothing was written"
    )
    assert stopped.value.hint == (
        "rerun the same command to resume from step 2 (or add --restart to start over): "
        "medqwen train"
    )
    monkeypatch.undo()
    assert versions(bundle_dir) == [("v0001", [])]
    done = train_bundle(bundle_dir, tasks=["xray"], overrides=QUICK)
    assert (done.version, done.resumed_from) == ("v0002", 2)


def test_ctrl_c_while_writing_after_the_version_exists_publishes_the_curve_on_rerun(
    bundle_dir: Path, monkeypatch
) -> None:
    watch = {"watch": ["ct"], "eval_every": 1}
    real = Bundle.append_evals

    def ctrl_c_on_the_curve(self, records):
        if any(r.get("step") is not None for r in records):
            raise KeyboardInterrupt
        return real(self, records)

    monkeypatch.setattr(Bundle, "append_evals", ctrl_c_on_the_curve)
    with pytest.raises(Interrupted) as stopped:
        train_bundle(bundle_dir, tasks=["xray"], overrides=QUICK, **watch)
    assert stopped.value.message == (
        "interrupted after v0002 was written (trained on xray from v0001); left: its --watch curve"
    )
    monkeypatch.undo()
    done = train_bundle(bundle_dir, tasks=["xray"], overrides=QUICK, **watch)
    assert done.version == "v0002" and len(versions(bundle_dir)) == 2
    assert "completed what its run left: its --watch curve (4 steps)" in done.notes[0]
    rows = Bundle.open(bundle_dir).read_evals()
    assert [r["step"] for r in rows if r["headline"]] == [0, 1, 2, 3]
    assert [p["step"] for p in done.curves] == [0, 1, 2, 3]
    assert not (bundle_dir / "work").exists()
    again = train_bundle(bundle_dir, tasks=["xray"], overrides=QUICK, **watch)
    assert "nothing left to do" in again.notes[0]
    assert len(Bundle.open(bundle_dir).read_evals()) == len(rows)


def test_a_task_the_head_trained_another_way_needs_again(bundle_dir: Path) -> None:
    train_bundle(bundle_dir, tasks=["xray"], overrides=QUICK)
    with pytest.raises(AlreadyTrained) as refused:
        train_bundle(bundle_dir, tasks=["xray"], overrides=[*QUICK, "train.lr=0.002"])
    assert refused.value.message == (
        "v0002, the head version, already trained xray (with another recipe: train.lr differ)"
    )
    assert refused.value.hint == "add --again to train xray again, as a new version on top of v0002"
    with pytest.raises(AlreadyTrained, match=r"already trained xray \(with its tasks xray\)"):
        train_bundle(bundle_dir, tasks=["xray", "ct"], overrides=QUICK)
    assert len(versions(bundle_dir)) == 2 and not (bundle_dir / "work").exists()


def test_a_deleted_data_folder_is_named_with_the_version_that_trained_on_it(
    bundle_dir: Path, tmp_path: Path
) -> None:
    from medqwen_cli.data.synthetic import generate_task

    data = generate_task("mri", tmp_path / "myct", size=16)
    continue_bundle(bundle_dir, task=str(data), overrides=QUICK, evaluate=False)  # v0002
    shutil.rmtree(data)
    gone = f"task '{data}' was trained in v0002 on {data.resolve()}, which no longer exists"
    with pytest.raises(DataError) as again:
        continue_bundle(bundle_dir, task=str(data), overrides=QUICK, again=True)
    assert again.value.message == gone and "restore the data there" in again.value.hint
    with pytest.raises(DataError) as scored:  # continue scores every task seen: refused first
        continue_bundle(bundle_dir, task="ct", overrides=QUICK)
    assert scored.value.message == gone and "--no-eval" in scored.value.hint
    with pytest.raises(DataError) as replayed:  # replay reads it: refused before any model
        continue_bundle(bundle_dir, task="ct", overrides=[*QUICK, "continual.replay=0.25"])
    assert replayed.value.message == gone and "without --replay" in replayed.value.hint
    assert len(versions(bundle_dir)) == 2 and not (bundle_dir / "work").exists()
    done = continue_bundle(bundle_dir, task="ct", overrides=QUICK, evaluate=False)
    assert done.version == "v0003"


def test_a_path_that_does_not_exist_is_said_plainly() -> None:
    from medqwen_cli.errors import RecipeError
    from medqwen_cli.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes/debug/tiny.yaml")
    with pytest.raises(RecipeError, match=r"dataset path 'data/myct' does not exist \(/"):
        recipe.task_datasets("data/myct")


def test_the_same_command_after_its_version_failed_acceptance_trains_nothing(
    bundle_dir: Path,
) -> None:
    """A version that failed its acceptance criteria is not the default, so the head is its
    parent; the same command again is still that version's run, not a new one."""
    strict = [*QUICK, "acceptance.new_task.min_score=2"]  # a score above 1: always fails
    continue_bundle(bundle_dir, task="xray", overrides=QUICK)
    failed = continue_bundle(bundle_dir, task="ct", overrides=strict)
    assert failed.version == "v0003" and Bundle.open(bundle_dir).head == "v0002"
    again = continue_bundle(bundle_dir, task="ct", overrides=strict)
    assert again.version == "v0003" and "nothing left to do" in again.notes[0]
    assert len(versions(bundle_dir)) == 3
    other = continue_bundle(bundle_dir, task="ct", overrides=QUICK)  # another recipe: trains
    assert (other.version, other.parent) == ("v0004", "v0002")

"""Replay: the batch mix, its resumable sampler, what a version records, and the refusals."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from medqwen_cli.bundle import Bundle
from medqwen_cli.continual import ReplayMix, replayed_per_batch
from medqwen_cli.data.regimes import RegimeSampler
from medqwen_cli.errors import DataError, MedqwenError, RecipeError
from medqwen_cli.training.run import continue_bundle

QUICK = ["train.max_steps=3", "train.checkpoint_every=1000"]


def test_replayed_share_rounds_up_and_is_at_least_one() -> None:
    assert replayed_per_batch(0.0, 8) == 0
    assert replayed_per_batch(0.02, 8) == 1  # at least one record when f > 0
    assert replayed_per_batch(0.1, 8) == 1
    assert replayed_per_batch(0.25, 8) == 2
    assert replayed_per_batch(0.3, 4) == 2  # ceil(1.2)
    assert replayed_per_batch(0.9, 10) == 9


def _mix(rank: int = 0, world: int = 1, new_size: int = 10) -> ReplayMix:
    new = RegimeSampler([new_size], "mixed", seed=3, rank=rank, world_size=world)
    old = RegimeSampler([3, 7], "round_robin", seed=4, rank=rank, world_size=world)
    return ReplayMix(new, old, batch_size=4, per_batch=1, offset=1)


def _take(mix: ReplayMix, n: int, it=None) -> list[tuple[int, int]]:
    it = it if it is not None else iter(mix)
    return [next(it) for _ in range(n)]


def test_every_batch_has_its_replayed_share_and_tasks_weigh_equally() -> None:
    draws = _take(_mix(), 4 * 40)
    for b in range(40):
        batch = draws[4 * b : 4 * b + 4]
        assert [d for d, _ in batch[:3]] == [0, 0, 0] and batch[3][0] in (1, 2)
    replayed = Counter(d for d, _ in draws if d > 0)
    assert replayed[1] == replayed[2] == 20  # 3 and 7 records, equal weight
    # within a task, a record repeats only after the whole pool was drawn
    first = [i for d, i in draws if d == 1][:3]
    assert sorted(first) == [0, 1, 2]


def test_resume_mid_batch_continues_exactly() -> None:
    mix = _mix()
    it = iter(mix)
    _take(mix, 13, it)  # mid-batch, mid-epoch
    state = json.loads(json.dumps(mix.state_dict()))  # what a checkpoint stores: plain JSON
    want = _take(mix, 50, it)
    again = _mix()
    again.load_state_dict(state)
    assert _take(again, 50) == want
    other = ReplayMix(
        RegimeSampler([10], seed=3), RegimeSampler([3, 7], "round_robin", seed=4),
        batch_size=4, per_batch=2, offset=1,
    )  # fmt: skip
    with pytest.raises(DataError, match="not made with this replay"):
        other.load_state_dict(state)


def test_two_processes_draw_disjoint_new_and_replayed_records() -> None:
    r0, r1 = _take(_mix(0, 2, 20), 8), _take(_mix(1, 2, 20), 8)  # 2 batches: 6 new, 2 replayed
    new0, new1 = {x for x in r0 if x[0] == 0}, {x for x in r1 if x[0] == 0}
    old0, old1 = {x for x in r0 if x[0] > 0}, {x for x in r1 if x[0] > 0}
    assert len(new0) == len(new1) == 6 and not new0 & new1
    assert len(old0) == len(old1) == 2 and not old0 & old1


# --------------------------------------------------------------------------- end to end


def test_continue_with_replay_mixes_a_fixed_buffer_and_records_ids_only(
    bundle_dir: Path, seen_batches: list, cli
) -> None:
    scored = [*QUICK, "eval.max_samples=2"]
    continue_bundle(bundle_dir, task="xray", overrides=scored)
    seen_batches.clear()
    result = continue_bundle(
        bundle_dir, task="ct", evaluate=False,
        overrides=[*scored, "continual.replay=0.25", "continual.replay_per_task=3"],
    )  # fmt: skip
    assert len(seen_batches) == 3
    for batch in seen_batches:  # batch 4: one replayed xray record, three ct records
        assert sorted(t for t, _ in batch) == ["ct", "ct", "ct", "xray"]
    b = Bundle.open(bundle_dir)
    info = b.read_version_info(result.version)
    assert {"continual.json", "data.json"} <= set(info.files)  # checksummed like every file
    assert info.recipe["continual"] == {
        "replay": 0.25, "replay_per_task": 3, "protect": False, "protect_energy": 0.99,
        "protect_records": 100, "protect_exclude": [], "protect_full": "fit",
    }  # fmt: skip
    record = b.read_json("continual.json", result.version)
    ids = record["tasks"]["xray"]["ids"]
    assert len(ids) == 3 and record["tasks"]["xray"]["data_checked_against"] == "v0002"
    assert {i for batch in seen_batches for t, i in batch if t == "xray"} <= set(ids)
    assert (record["strategy"], record["replay"], record["replayed_per_batch"]) == (
        "replay",
        0.25,
        1,
    )
    text = (b.version_dir(result.version) / "continual.json").read_text()
    assert "question" not in text and "answer" not in text  # ids, never record text
    assert result.continual["tasks"] == {"xray": 3}
    data = b.read_json("data.json", result.version)["datasets"]
    assert [(d["task"], d["path"], d["split"]) for d in data] == [("ct", "builtin:ct", "train")]
    # forgetting-report says how each version kept the earlier tasks
    report = cli("forgetting-report", str(bundle_dir), "--format", "json")
    assert report.code == 0, report.err
    assert json.loads(report.out)["runs"][0]["strategies"] == {
        "v0002": "none", "v0003": "replay 0.25, 3 per task",
    }  # fmt: skip
    table = cli("forgetting-report", str(bundle_dir), "--format", "markdown").out
    assert "v0003 (replay 0.25, 3 per task)" in table


def test_an_interrupted_replay_run_resumes_to_the_same_adapter(crash_and_resume_on_ct) -> None:
    crash_and_resume_on_ct(
        ["train.max_steps=8", "train.checkpoint_every=2", "continual.replay=0.5"]
    )


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals must come before any model loads."""
    import medqwen_cli.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(loading, "load_adapted", refuse)


def test_replay_without_an_earlier_task_is_refused(bundle_dir: Path, no_model) -> None:
    with pytest.raises(RecipeError, match="trained no task yet: nothing to replay") as err:
        continue_bundle(bundle_dir, task="ct", overrides=["continual.replay=0.1"])
    assert "--replay 0.1" in err.value.hint


def test_replay_that_fills_the_batch_or_a_buffer_without_replay_is_refused(
    bundle_dir: Path, no_model
) -> None:
    with pytest.raises(RecipeError, match="leaves none for the new task") as err:
        continue_bundle(
            bundle_dir, task="ct", overrides=["continual.replay=0.5", "train.batch_size=1"]
        )
    assert "train.batch_size" in err.value.hint
    with pytest.raises(RecipeError, match="replay_per_task=5 is set but continual.replay is 0"):
        continue_bundle(bundle_dir, task="ct", overrides=["continual.replay_per_task=5"])
    with pytest.raises(RecipeError, match="less than or equal to 0.9"):
        continue_bundle(bundle_dir, task="ct", overrides=["continual.replay=0.95"])


def _jsonl_task(path: Path, n: int = 6) -> None:
    lines = [
        {
            "id": f"q{i}",
            "type": "vqa_closed",
            "question": f"Is finding {i} present?",
            "answer": "yes" if i % 2 else "no",
            "labels": ["yes", "no"],
        }  # fmt: skip
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_an_earlier_task_whose_data_changed_or_is_gone_is_refused(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old_task.jsonl"
    _jsonl_task(old)
    continue_bundle(bundle_dir, task=str(old), overrides=QUICK, evaluate=False)
    import medqwen_cli.loading as loading

    monkeypatch.setattr(loading, "load_adapted", lambda *a, **k: pytest.fail("model loaded"))
    _jsonl_task(old, n=7)  # one record added
    with pytest.raises(DataError) as err:
        continue_bundle(bundle_dir, task="ct", overrides=["continual.replay=0.25"])
    assert f"earlier task {str(old.resolve())!r}" in err.value.message
    assert (
        "has changed since v0002" in err.value.message
        and "7 records now, 6 then" in err.value.message
    )
    assert "restore the data" in err.value.hint
    old.unlink()
    with pytest.raises(MedqwenError) as err:
        continue_bundle(bundle_dir, task="ct", overrides=["continual.replay=0.25"])
    assert "old_task.jsonl" in str(err.value) and "replay" in str(err.value)


def test_cli_replay_option_range_and_summary(cli, bundle_dir: Path) -> None:
    bad = cli("continue", str(bundle_dir), "--task", "ct", "--replay", "0.95")
    assert bad.code == 2 and "less than or equal to 0.9" in bad.err
    cli(
        "continue",
        str(bundle_dir),
        "--task",
        "xray",
        "--no-eval",
        *sum((["--set", s] for s in QUICK), []),
    )
    done = cli("continue", str(bundle_dir), "--task", "ct", "--replay", "0.1", "--no-eval",
               "--format", "csv", *sum((["--set", s] for s in QUICK), []))  # fmt: skip
    assert done.code == 0, done.err
    rows = dict(csv.reader(io.StringIO(done.out)))
    # the share actually replayed is said: at least one record of a batch of 4 is 25 %, not 10 %
    assert re.fullmatch(
        r"replay 0\.1: 1 of 4 records per batch \(25\.0%\) from xray \([1-9]\d* records\)",
        rows["strategy"],
    ), rows["strategy"]

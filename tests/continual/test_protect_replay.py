"""`--protect` with `--replay`: the branch trains on batches that mix in earlier records, keeps
the protect guarantee, resumes exactly, and the version records both strategies."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch
from test_protect import _logits, _task_dir  # tests/continual is on sys.path (prepend import mode)

from medqwen_cli.bundle import Bundle
from medqwen_cli.training.run import continue_bundle

QUICK = ["train.max_steps=3", "train.checkpoint_every=1000"]


def test_protect_with_replay_mixes_batches_and_keeps_the_first_task_exactly(
    bundle_dir: Path, tmp_path: Path, seen_batches: list, cli
) -> None:
    from medqwen_cli.data import load_records
    from medqwen_cli.recipe import DatasetSpec
    from medqwen_cli.settings import Settings

    task_a = _task_dir(tmp_path / "a", 1)
    a = str(task_a.resolve())
    continue_bundle(bundle_dir, task=str(task_a), overrides=QUICK, evaluate=False)  # v0002
    seen_batches.clear()
    sets = ["continual.protect=true", "continual.protect_energy=1.0", "continual.protect_records=1",
            "train.max_steps=5", "train.lr=0.01", "train.checkpoint_every=1000"]  # fmt: skip
    done = cli("continue", str(bundle_dir), "--task", "ct", "--protect", "--replay", "0.25",
               "--no-eval", "--format", "csv", *sum((["--set", s] for s in sets), []))  # fmt: skip
    assert done.code == 0, done.err
    # every training batch of 4: three ct records and A's one record (the basis batches, A's
    # before training and ct's after, hold one task each)
    mixed = [
        sorted(t for t, _ in batch) for batch in seen_batches if len({t for t, _ in batch}) > 1
    ]
    assert mixed == [["a", "ct", "ct", "ct"]] * 5  # records name their dataset
    rows = [row for row in csv.reader(io.StringIO(done.out)) if row and row[0] == "strategy"]
    assert [r[1].split(" ")[0] for r in rows] == ["protect:", "replay"], rows
    assert rows[1][1].startswith("replay 0.25: 1 of 4 records per batch (25.0%) from")

    bundle = Bundle.open(bundle_dir)
    record = bundle.read_json("continual.json", "v0003")
    assert record["strategy"] == "protect" and record["protected_tasks"] == [a]
    assert record["replay"]["tasks"][a]["ids"] == ["q0"] and record["replay"]["replay"] == 0.25
    # the guarantee holds whatever the batches hold: A's inputs span M exactly at energy 1
    cache = Settings.from_env().data_cache_dir
    a_records = load_records(DatasetSpec(path=str(task_a)), "eval", cache_dir=cache)
    before, after = _logits(bundle, "v0002", a_records), _logits(bundle, "v0003", a_records)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    ct = load_records(DatasetSpec(path="builtin:ct"), "eval", cache_dir=cache)[:2]
    assert (_logits(bundle, "v0003", ct) - _logits(bundle, "v0002", ct)).abs().max() > 1e-3

    shown = json.loads(cli("inspect", str(bundle_dir), "--format", "json").out)
    assert shown["strategy"] == "protect 1.0, branch 1 + replay 0.25"
    assert cli("evaluate", str(bundle_dir), "--task", "ct", "--format", "json").code == 0
    shown = cli("forgetting-report", str(bundle_dir), "--format", "json")
    assert shown.code == 0, shown.err
    report = json.loads(shown.out)
    assert report["runs"][0]["strategies"]["v0003"] == "protect 1.0, branch 1 + replay 0.25"
    # a protected run without replay writes no replay field: its record reads as before
    third = continue_bundle(bundle_dir, task="xray", overrides=[*QUICK, *sets[:3]], evaluate=False)
    assert "replay" not in Bundle.open(bundle_dir).read_json("continual.json", third.version)
    assert "replay" not in third.continual


def test_an_interrupted_protected_replay_run_resumes_to_the_same_adapter(
    crash_and_resume_on_ct,
) -> None:
    adapter = crash_and_resume_on_ct(
        ["train.max_steps=6", "train.checkpoint_every=2", "continual.protect=true",
         "continual.protect_energy=0.6", "continual.protect_records=8", "continual.replay=0.5"]
    )  # fmt: skip
    assert any(".branches.0." in k for k in adapter)

"""Two CPU processes (gloo DDP) equal one process with the same global batch.

Launched as `accelerate launch --multi_gpu --num_processes 2` on a machine without a GPU, where
accelerate falls back to MULTI_CPU over gloo. (`accelerate launch --cpu --num_processes 2` runs a
single process in accelerate 1.15: its multi-process CPU path needs MPI; see docs/training.md.)

Tolerance: the task loss is normalised by the global number of answer tokens, so both runs
minimise the same sum; only float summation order differs (relative update difference < 1e-3).
The balance loss is turned off here: each process computes it on its own tokens (a mean of two
per-process values instead of one value over all tokens), which is a real, documented difference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle

ACCELERATE = Path(sys.executable).with_name("accelerate")
STEPS = ["--set", "train.max_steps=6", "--set", "train.checkpoint_every=1000", "--set", "train.lr=0.01",
         "--set", "adapter.balance_loss=0"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="--multi_gpu would use the GPUs: this test is for CPU/gloo"
)
def test_two_cpu_processes_equal_one(bundle_dir: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    shutil.copytree(bundle_dir, single)
    # in-process Accelerator() calls of earlier tests leave ACCELERATE_* variables behind; a
    # launched run must see only what `accelerate launch` sets
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run(
        [sys.executable, "-m", "medqwen_cli", "train", str(single), "--task", "xray", "-f", "json",
         "--set", "train.batch_size=4", *STEPS],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    launched = subprocess.run(
        [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "medqwen_cli", "train",
         str(bundle_dir), "--task", "xray", "-f", "json", "--set", "train.batch_size=2", *STEPS],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = Bundle.open(bundle_dir)
    assert [e.id for e in two.manifest.versions] == ["v0001", "v0002"]  # only one process wrote
    one_adapter, two_adapter = Bundle.open(single).read_adapter("v0002"), two.read_adapter("v0002")
    start = Bundle.open(single).read_adapter("v0001")
    # AdamW normalises each coordinate, so compare whole updates, not single entries
    diff = sum(float((one_adapter[k] - two_adapter[k]).norm() ** 2) for k in one_adapter) ** 0.5
    update = sum(float((one_adapter[k] - start[k]).norm() ** 2) for k in one_adapter) ** 0.5
    print(json.dumps({"relative_difference": diff / update, "update_norm": update}))
    assert update > 1e-2 and diff / update < 1e-3, (diff, update)
    one_metrics = Bundle.open(single).read_json("metrics.json", "v0002")["train"]
    two_metrics = two.read_json("metrics.json", "v0002")["train"]
    assert one_metrics["samples"] == two_metrics["samples"] == 24
    assert abs(one_metrics["mean_loss"] - two_metrics["mean_loss"]) < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="--multi_gpu would use the GPUs: this test is for CPU/gloo"
)
def test_two_processes_continue_with_replay(bundle_dir: Path) -> None:
    """Each process mixes its shard of the earlier task's records into its batches; one version
    with the replay recorded is written."""
    launched = _xray_then_two_processes_on_ct(
        bundle_dir, "--replay", "0.5", "--set", "train.batch_size=2"
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    b = Bundle.open(bundle_dir)
    assert [e.id for e in b.manifest.versions] == ["v0001", "v0002", "v0003"]
    record = b.read_json("continual.json", "v0003")
    assert record["replayed_per_batch"] == 1 and record["tasks"]["xray"]["records"] > 0
    metrics = b.read_json("metrics.json", "v0003")["train"]
    assert metrics["samples"] == 24 and metrics["continual"]["tasks"] == {
        "xray": record["tasks"]["xray"]["records"]
    }


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="--multi_gpu would use the GPUs: this test is for CPU/gloo"
)
def test_two_processes_continue_with_protect(bundle_dir: Path) -> None:
    """Both processes build the same bases and branch; the branch trains in its complement under
    DDP; one version with its bases is written and loads."""
    from medqwen_cli.loading import load_adapted

    launched = _xray_then_two_processes_on_ct(
        bundle_dir,
        "--protect",
        "--set",
        "continual.protect_energy=0.6",
        "--set",
        "continual.protect_records=8",
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    b = Bundle.open(bundle_dir)
    assert [e.id for e in b.manifest.versions] == ["v0001", "v0002", "v0003"]
    record = b.read_json("continual.json", "v0003")
    assert record["branches"] == 1 and record["protected_tasks"] == ["xray"]
    from medqwen_cli.adapters import adapter_layers
    from medqwen_cli.continual.bases import load_bases

    bases, _ = load_bases(b, "v0003")  # the columns as a run reads them (16-bit, settled)
    layers = dict(adapter_layers(load_adapted(b, "v0003").model))
    for name, layer in layers.items():  # the trained branch stayed in xray's complement
        group = record["groups"][name]
        owner = bases.owner[group]
        guard = bases.columns[group][:, [c for c, t in enumerate(owner) if t == 0]]  # xray's
        assert guard.shape[1] == record["bases"]["guarded"][group]  # all of them guard it
        a = layer.branches[0].lora_A.detach().double()
        assert guard.shape[1] > 0 and float((a @ guard).norm() / a.norm()) < 1e-4, name


def _xray_then_two_processes_on_ct(bundle_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """One process continues on xray; then two gloo processes continue on ct with `options`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run(
        [sys.executable, "-m", "medqwen_cli", "continue", str(bundle_dir), "--task", "xray",
         "--no-eval", "-f", "json", *STEPS],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    return subprocess.run(
        [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "medqwen_cli", "continue",
         str(bundle_dir), "--task", "ct", "--no-eval", "-f", "json", *options, *STEPS],
        capture_output=True, text=True, env=env,
    )  # fmt: skip

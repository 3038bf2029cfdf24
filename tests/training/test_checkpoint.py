"""Checkpoints: a round trip restores everything, old ones are pruned, resume is exact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.training import checkpoint
from medqwen_cli.training.checkpoint import (
    KEEP,
    LOG_FILE,
    Progress,
    latest_checkpoint,
    resume,
    run_key,
    save_checkpoint,
)
from medqwen_cli.training.optim import lr_factor


class _Sampler:
    def __init__(self) -> None:
        self.state: dict = {}

    def state_dict(self) -> dict:
        return {"position": 7}

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def _trained(steps: int) -> tuple[torch.nn.Linear, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, 10, 0.2, "cosine")
    )
    for _ in range(steps):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_round_trip_restores_model_optimizer_scheduler_rng_and_prunes(
    tmp_path: Path, monkeypatch
) -> None:
    # a plain Linear stands for the adapters: load its tensors as the adapter loader would
    monkeypatch.setattr(checkpoint, "load_adapter_state", lambda m, sd: m.load_state_dict(sd))
    model, optimizer, scheduler = _trained(3)
    adapter = {k: v.detach().clone() for k, v in model.state_dict().items()}
    (tmp_path / LOG_FILE).write_text("a\nb\nc\n")
    for step in (1, 2, 3):
        progress = Progress(step=step, tokens=12, log_lines=2, sampler={"position": 7})
        save_checkpoint(
            tmp_path, adapter=adapter, optimizer=optimizer, scheduler=scheduler, progress=progress
        )
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000002", "ckpt-000003"][-KEEP:]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000003"
    expected_draw = torch.rand(3)  # the RNG as it was saved, one draw later

    fresh, fresh_opt, fresh_sched = _trained(0)
    sampler = _Sampler()
    restored = resume(
        tmp_path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, sampler=sampler,
        total=10, main=True,
    )  # fmt: skip
    assert restored == Progress(step=3, tokens=12, log_lines=2, sampler={"position": 7})
    assert sampler.state == {"position": 7}
    for key, value in adapter.items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"] == 3
    for a, b in zip(fresh_opt.state.values(), optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert torch.equal(torch.rand(3), expected_draw)
    assert (tmp_path / LOG_FILE).read_text() == "a\nb\n"  # cut back to the checkpoint's lines


def test_resume_without_a_checkpoint_starts_fresh(tmp_path: Path) -> None:
    model, optimizer, scheduler = _trained(0)
    progress = resume(
        tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, sampler=_Sampler(),
        total=10, main=True,
    )  # fmt: skip
    assert progress == Progress()


def test_run_key_names_the_same_run_the_same_way() -> None:
    key = run_key("v0001", ["xray"], {"train": {"lr": 1e-3}}, "train")
    assert key == run_key("v0001", ["xray"], {"train": {"lr": 1e-3}}, "train") and len(key) == 12
    assert key != run_key("v0001", ["xray"], {"train": {"lr": 1e-3}}, "continue")
    assert key != run_key("v0002", ["xray"], {"train": {"lr": 1e-3}}, "train")
    assert key != run_key("v0001", ["xray"], {"train": {"lr": 2e-3}}, "train")


def _train_cmd(bundle: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medqwen_cli", "train", str(bundle), "--task", "xray", "--format", "json",
            "--set", "train.max_steps=40", "--set", "train.checkpoint_every=5", *extra]  # fmt: skip


def test_sigkill_then_rerun_resumes_to_the_same_weights(bundle_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    shutil.copytree(bundle_dir, reference)
    subprocess.run(_train_cmd(reference), check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(bundle_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list((bundle_dir / "work").glob("*/ckpt-000010/state.json")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    b = Bundle.open(bundle_dir)
    assert b.head == "v0001" and b.verify() == []  # a killed run leaves no partial version

    out = subprocess.run(_train_cmd(bundle_dir), check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    assert result["resumed_from"] >= 10 and result["steps"] == 40
    resumed = Bundle.open(bundle_dir).read_adapter("v0002")
    uninterrupted = Bundle.open(reference).read_adapter("v0002")
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    log = (bundle_dir / "versions/v0002/train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(
        range(5, 41, 5)
    )  # log_every = 5, no duplicate or lost line

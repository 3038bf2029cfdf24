"""Resumable training state in the bundle's work area, as safetensors + JSON (never pickle).

    <bundle>/work/<run key>/
      ckpt-000020/            one directory per checkpoint, written to a temp dir then renamed
        tensors.safetensors   adapter tensors, AdamW moments, RNG states
        state.json            step, optimizer param groups, scheduler, sampler, loss sums, log size
      train_log.jsonl         one line per logging step (truncated back to a checkpoint on resume)

The run key hashes everything that defines a run (parent version, tasks, resolved recipe, and
whether it is a `train` or a `continue`), so rerunning the same command after a crash finds its
checkpoints and a changed command starts fresh. `accelerator.save_state` is not used because it
pickles the optimizer, scheduler and RNG states.

`resume` restores the latest checkpoint before `accelerator.prepare`; a `Checkpointer` saves one
every `checkpoint_every` steps (never at the last step: the version is written then).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medqwen_cli.adapters import adapter_state_dict, load_adapter_state
from medqwen_cli.bundle import atomic_write_json, load_tensors, save_tensors

KEEP = 2  # checkpoints kept per run
LOG_FILE = "train_log.jsonl"
logger = logging.getLogger(__name__)


def run_key(parent: str | None, tasks: list[str], recipe: dict[str, Any], kind: str) -> str:
    """12 hex digits naming the run's work directory: the same run gets the same key."""
    blob = json.dumps(
        {"parent": parent, "tasks": tasks, "recipe": recipe, "kind": kind}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Progress:
    """Counters that travel with a checkpoint."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # input tokens seen (attention mask: prompt and answer), all processes
    samples: int = 0
    loss_sum: float = 0.0  # sum of per-step task losses (for the mean)
    last_loss: float | None = None
    log_lines: int = 0  # lines of train_log.jsonl that belong to this state
    sampler: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # training time before this (re)start


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = tensor
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    run_dir: Path,
    *,
    adapter: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
) -> Path:
    """Write ckpt-<step> atomically and prune old ones; returns its directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / f"ckpt-{progress.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=run_dir))
    try:
        optim_tensors, optim_meta = _optimizer_tensors(optimizer)
        tensors = {f"adapter.{k}": v for k, v in adapter.items()} | optim_tensors
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_tensors(tmp / "tensors.safetensors", tensors)
        py_state = random.getstate()
        atomic_write_json(
            tmp / "state.json",
            {
                "progress": progress.__dict__,
                "optimizer": optim_meta,
                "scheduler": scheduler.state_dict(),  # lr_lambdas are functions: saved as None
                "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            },
        )
        if target.exists():  # a checkpoint of the same step from a run that died after writing it
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(run_dir.glob("ckpt-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in sorted(run_dir.glob("ckpt-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


def load_checkpoint(
    ckpt: Path, *, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[dict[str, torch.Tensor], Progress]:
    """Restore optimizer, scheduler and RNG; return the adapter tensors and the progress."""
    tensors = load_tensors(ckpt / "tensors.safetensors")
    state = json.loads((ckpt / "state.json").read_text())
    _restore_optimizer(optimizer, tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    adapter = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    return adapter, Progress(**state["progress"])


def truncate_log(path: Path, lines: int) -> None:
    """Keep the first `lines` lines of the training log (those written before the checkpoint)."""
    if not path.is_file():
        return
    kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
    path.write_text("".join(kept), encoding="utf-8")


def resume(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: Any,
    total: int,
    main: bool,
) -> Progress:
    """The progress of `run_dir`'s latest checkpoint, with the adapters (into the unwrapped
    `model`), optimizer, scheduler, RNG and sampler put back; a fresh Progress when there is none.
    The main process cuts train_log.jsonl back to the checkpoint and says it resumed."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return Progress()
    adapter, progress = load_checkpoint(ckpt, optimizer=optimizer, scheduler=scheduler)
    load_adapter_state(model, adapter)
    sampler.load_state_dict(progress.sampler)
    if main:
        truncate_log(run_dir / LOG_FILE, progress.log_lines)
        logger.info(
            "resumed from step %d of %d (checkpoint %s; add --restart to start over)",
            progress.step, total, ckpt,
        )  # fmt: skip
    return progress


class Checkpointer:
    """Saves the run's state every `every` steps before the last (the main process writes, the
    others wait). `model` is the unwrapped model, `optimizer` the prepared one."""

    def __init__(
        self,
        run_dir: Path,
        *,
        every: int,
        total: int,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        sampler: Any,
        accelerator: Any,
    ) -> None:
        self.run_dir, self.every, self.total = run_dir, every, total
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.sampler, self.accelerator = sampler, accelerator

    def __call__(self, progress: Progress, seconds: float) -> None:
        """Checkpoint `progress` if its step is due; `seconds`: training time of this (re)start,
        added to the saved `progress.seconds` (the live counter keeps the time before it)."""
        if progress.step % self.every != 0 or progress.step >= self.total:
            return
        progress.sampler = self.sampler.state_dict()
        if self.accelerator.is_main_process:
            before = progress.seconds
            progress.seconds = before + seconds
            inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper
            save_checkpoint(
                self.run_dir,
                adapter=adapter_state_dict(self.model),
                optimizer=inner,
                scheduler=self.scheduler,
                progress=progress,
            )
            progress.seconds = before
        self.accelerator.wait_for_everyone()

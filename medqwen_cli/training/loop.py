"""The training loop: plain accelerate, readable top to bottom.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples on every process. All
micro-batches of a step are collated first so the loss can be normalised by the number of answer
tokens in the whole global batch:

    loss = sum over answer tokens of CE / (answer tokens in the global batch)
           + lambda * sum over routed layers of L_b (averaged over micro-batches)

which makes a 2-process run equal a 1-process run with the same global batch (up to the balance
term, which each process computes on its own tokens, and float summation order).

`fit` restores the latest checkpoint (`resume`), then per step: `train_step` (forwards and
backwards), the optimizer and schedule, a `StepLogger` (train_log.jsonl, trackers, progress
stats) and a `Checkpointer` (every `checkpoint_every` steps). With a `watch`
(training/watch.py), the main process scores the watched tasks at step 0 (or the step resumed
from), every `every` steps and at the last step, while the others wait at a barrier; the watch
restores all it touches, and its time is left out of the run's timings.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medqwen_cli.adapters import balance_loss
from medqwen_cli.errors import Interrupted, TrainingError
from medqwen_cli.recipe import TrainConfig
from medqwen_cli.training.checkpoint import (
    LOG_FILE,
    Checkpointer,
    Progress,
    latest_checkpoint,
    resume,
)
from medqwen_cli.training.optim import build_optimizer, build_scheduler

IGNORE = -100
# progress_fn(steps done, total steps, stats): called once before the first step (stats empty:
# the step the run starts or resumes from), then after every step with its `loss` and
# `balance_loss`; on a logging step (every train.log_every, and the last) stats is the
# train_log.jsonl line (step, loss, balance_loss, lr, tokens, tokens_per_s, elapsed_s) plus
# `logged: True`.
ProgressFn = Callable[[int, int, dict[str, Any]], None]


@dataclass
class FitResult:
    progress: Progress
    resumed_from: int  # step of the checkpoint the run resumed from (0: fresh)
    total_steps: int
    seconds: float


@dataclass
class StepStats:
    """One optimizer step, summed over all processes."""

    loss: float  # the task loss (mean CE per answer token of the global batch)
    balance: float  # the balance loss (this process's, mean over micro-batches)
    tokens: int  # input tokens (attention mask), all processes
    samples: int


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose logits predict a label token in some row: (K,), sorted.

    Position t predicts token t + 1. Only these positions need the vocabulary projection, the
    largest single matmul of a small model (49k x 576 per token for nano): passed to the model
    as `logits_to_keep`, they cut the language-model head's cost to the answer tokens.
    """
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)


def token_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of next-token cross-entropy over positions whose label is not -100.

    `logits` (b, t, V) covers every position, or with `positions` (K,) only those positions
    (b, K, V), as `model(..., logits_to_keep=positions)` returns them.
    """
    if positions is None:
        shift_logits = logits[:, :-1, :].float()  # (b, t-1, V)
        shift_labels = labels[:, 1:]  # (b, t-1)
    else:
        shift_logits = logits.float()  # (b, K, V)
        shift_labels = labels[:, positions + 1]  # (b, K)
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def fit(
    model: nn.Module,
    batches: Iterator[list[dict[str, torch.Tensor]]],
    sampler: Any,
    *,
    cfg: TrainConfig,
    balance_weight: float,
    total_steps: int,
    accelerator: Any,
    run_dir: Path,
    progress_fn: ProgressFn | None = None,
    watch: Any = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> FitResult:
    """Train `model`'s adapters for `total_steps`, resuming from `run_dir` when it has a checkpoint.

    `batches` yields, per optimizer step, this process's list of `grad_accum` collated
    micro-batches; `sampler` is the index sampler behind it (its state goes into checkpoints).
    `watch` (a `training.watch.Watch`, or None) scores the model at its due steps.
    `after_step(model)` runs after every optimizer step, on the unwrapped model (a continual
    strategy's phase: protect puts its branches back into their complement).
    """
    # adapter dropout draws from the global RNGs: seeded by train.seed (one stream per process),
    # so a run repeats exactly; `resume` then restores a checkpoint's RNG states
    random.seed(cfg.seed + accelerator.process_index)
    torch.manual_seed(cfg.seed + accelerator.process_index)
    unwrapped = model
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    run_dir.mkdir(parents=True, exist_ok=True)
    # before prepare: the checkpoint holds the unwrapped adapters and the bare optimizer's state
    progress = resume(
        run_dir, model=unwrapped, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
        total=total_steps, main=accelerator.is_main_process,
    )  # fmt: skip
    resumed_from = progress.step
    if watch is not None and accelerator.is_main_process:
        watch.truncate(progress.step)  # points after the checkpoint are scored again
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    checkpoints = Checkpointer(
        run_dir, every=cfg.checkpoint_every, total=total_steps, model=unwrapped,
        optimizer=optimizer, scheduler=scheduler, sampler=sampler, accelerator=accelerator,
    )  # fmt: skip

    def watch_at(step: int) -> float:
        """Score the watched tasks if `step` is due; the seconds it took."""
        if watch is None or not watch.due(step, total_steps):
            return 0.0
        t0 = time.perf_counter()
        if accelerator.is_main_process:
            watch(unwrapped, step, total_steps)
        accelerator.wait_for_everyone()  # the other processes wait while the main one scores
        return time.perf_counter() - t0

    try:
        watch_at(progress.step)
        log = StepLogger(
            run_dir / LOG_FILE, every=cfg.log_every, total=total_steps, scheduler=scheduler,
            accelerator=accelerator,
        )  # fmt: skip
        if progress_fn is not None:
            progress_fn(progress.step, total_steps, {})

        for step in range(progress.step, total_steps):
            stats = train_step(
                model, unwrapped, next(batches), accelerator=accelerator,
                balance_weight=balance_weight, grad_clip=cfg.grad_clip,
            )  # fmt: skip
            if not math.isfinite(stats.loss) or not math.isfinite(stats.balance):
                last = latest_checkpoint(run_dir)
                raise TrainingError(
                    f"loss became {stats.loss} at step {step + 1}; no version was written",
                    f"lower train.lr or check the data; the last good checkpoint ({last.name if last else 'none'}) "
                    "is kept and the same command resumes from it (add --restart to start over)",
                )
            optimizer.step()
            if after_step is not None:
                after_step(unwrapped)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            progress.step = step + 1
            progress.loss_sum += stats.loss
            progress.last_loss = stats.loss
            progress.tokens += stats.tokens
            progress.samples += stats.samples
            line = log(progress, stats)
            checkpoints(progress, log.elapsed())
            log.pause(watch_at(progress.step))  # timings count training only
            if progress_fn is not None:
                progress_fn(progress.step, total_steps, line)
    except KeyboardInterrupt:  # Ctrl-C: say what the same command will resume from
        raise interrupted(run_dir, progress.step, total_steps, cfg.checkpoint_every) from None
    seconds = progress.seconds + log.elapsed()
    model.eval()
    return FitResult(progress, resumed_from, total_steps, seconds)


def train_step(
    model: nn.Module,
    unwrapped: nn.Module,
    micro: list[dict[str, torch.Tensor]],
    *,
    accelerator: Any,
    balance_weight: float,
    grad_clip: float | None,
) -> StepStats:
    """Forwards and backwards of one step's micro-batches, gradients synchronised across
    processes on the last one, then clipped; the optimizer is left to the caller.

    `model` is the prepared (wrapped) model, `unwrapped` the same model unwrapped (the routed
    layers' balance losses are read from it).
    """
    world = accelerator.num_processes
    n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
    global_targets = accelerator.reduce(torch.tensor(n_targets, device=accelerator.device), "sum")
    global_targets = max(int(global_targets), 1)
    task_sum, bal_sum, step_tokens = 0.0, 0.0, 0
    for i, batch in enumerate(micro):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        sync = i == len(micro) - 1
        ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
        with ctx, accelerator.autocast():
            keep = answer_positions(labels)  # (K,)
            logits = model(**batch, logits_to_keep=keep).logits  # (b, K, V)
            # DDP averages gradients over processes: scale by world size to get the global mean
            share = world / global_targets
            task = token_loss_sum(logits, labels, keep) * share
            bal = balance_loss(unwrapped) if balance_weight > 0 else logits.new_zeros(())
            loss = task + balance_weight * bal / len(micro)
            accelerator.backward(loss)
        task_sum += float(task.detach()) / world
        bal_sum += float(bal.detach()) / len(micro)
        step_tokens += int(batch["attention_mask"].sum())
    if grad_clip is not None:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    step_loss = float(accelerator.reduce(torch.tensor(task_sum, device=accelerator.device), "sum"))
    samples = sum(int(b["input_ids"].shape[0]) for b in micro)
    return StepStats(step_loss, bal_sum, step_tokens * world, samples * world)


class StepLogger:
    """A train_log.jsonl line and a tracker entry every `every` steps and at the last step.

    Keeps the clock of this (re)start: `elapsed()` is training time, leaving out what `pause`
    was told (the watch's scoring); tokens_per_s is over the steps since the previous line.
    """

    def __init__(
        self, path: Path, *, every: int, total: int, scheduler: Any, accelerator: Any
    ) -> None:
        self.path, self.every, self.total = path, every, total
        self.scheduler, self.accelerator = scheduler, accelerator
        self.start = time.perf_counter()
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training since this (re)start."""
        return time.perf_counter() - self.start

    def pause(self, seconds: float) -> None:
        """Leave `seconds` out of the timings."""
        self.start, self.window_start = self.start + seconds, self.window_start + seconds

    def __call__(self, progress: Progress, stats: StepStats) -> dict[str, Any]:
        """The step's progress stats (see ProgressFn); on a logging step, also the line written
        (main process) and logged, and `progress.log_lines` counts it."""
        self.window_tokens += stats.tokens
        if progress.step % self.every != 0 and progress.step != self.total:
            return {"loss": stats.loss, "balance_loss": stats.balance}
        window = time.perf_counter() - self.window_start
        lrs = self.scheduler.get_last_lr()
        line = {
            "step": progress.step,
            "loss": round(stats.loss, 6),
            "balance_loss": round(stats.balance, 6),
            "lr": lrs[0],
            "tokens": progress.tokens,
            "tokens_per_s": round(self.window_tokens / max(window, 1e-9), 1),
            "elapsed_s": round(progress.seconds + self.elapsed(), 3),
        }
        if len(lrs) > 1:
            line["router_lr"] = lrs[1]
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        self.accelerator.log({k: v for k, v in line.items() if k != "step"}, step=progress.step)
        progress.log_lines += 1
        self.window_tokens, self.window_start = 0, time.perf_counter()
        return {**line, "logged": True}


def interrupted(run_dir: Path, done: int, total: int, every: int) -> Interrupted:
    """The Ctrl-C report: steps done, and the checkpoint a rerun resumes from (never the steps
    after it: the loop does not checkpoint on an interrupt, which may fall mid-step)."""
    last = latest_checkpoint(run_dir)
    if last is None:
        return Interrupted(
            f"interrupted after step {done} of {total}; no checkpoint yet (one every {every} steps)",
            "rerun the same command to start again from step 0 (or add --restart)",
        )
    step = int(last.name.removeprefix("ckpt-"))
    return Interrupted(
        f"interrupted after step {done} of {total}; the last checkpoint is step {step}",
        f"rerun the same command to resume from step {step} (or add --restart to start over)",
    )

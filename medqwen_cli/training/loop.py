"""The training loop: plain accelerate, readable top to bottom.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples on every process. All
micro-batches of a step are collated first so the loss can be normalised by the number of answer
tokens in the whole global batch:

    loss = sum over answer tokens of CE / (answer tokens in the global batch)
           + lambda * sum over routed layers of L_b (averaged over micro-batches)

which makes a 2-process run equal a 1-process run with the same global batch (up to the balance
term, which each process computes on its own tokens, and float summation order).

With a `watch` (training/watch.py), the main process scores the watched tasks at step 0 (or the
step resumed from), every `every` steps and at the last step, while the others wait at a
barrier; the watch restores all it touches, and its time is left out of the run's timings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medqwen_cli.adapters import adapter_state_dict, balance_loss, load_adapter_state
from medqwen_cli.errors import Interrupted, TrainingError
from medqwen_cli.recipe import TrainConfig
from medqwen_cli.training.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_log,
)
from medqwen_cli.training.optim import build_optimizer, build_scheduler

IGNORE = -100
# progress_fn(steps done, total steps, stats): called once before the first step (stats empty:
# the step the run starts or resumes from), then after every step with its `loss` and
# `balance_loss`; on a logging step (every train.log_every, and the last) stats is the
# train_log.jsonl line (step, loss, balance_loss, lr, tokens, tokens_per_s, elapsed_s) plus
# `logged: True`.
ProgressFn = Callable[[int, int, dict[str, Any]], None]
logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    progress: Progress
    resumed_from: int  # step of the checkpoint the run resumed from (0: fresh)
    total_steps: int
    seconds: float


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
) -> FitResult:
    """Train `model`'s adapters for `total_steps`, resuming from `run_dir` when it has a checkpoint.

    `batches` yields, per optimizer step, this process's list of `grad_accum` collated
    micro-batches; `sampler` is the index sampler behind it (its state goes into checkpoints).
    `watch` (a `training.watch.Watch`, or None) scores the model at its due steps.
    """
    unwrapped = model
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    progress, resumed_from = Progress(), 0
    log_path = run_dir / "train_log.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        adapter, progress = load_checkpoint(ckpt, optimizer=optimizer, scheduler=scheduler)
        load_adapter_state(unwrapped, adapter)
        sampler.load_state_dict(progress.sampler)
        resumed_from = progress.step
        if accelerator.is_main_process:
            truncate_log(log_path, progress.log_lines)
            logger.info(
                "resumed from step %d of %d (checkpoint %s; add --restart to start over)",
                resumed_from, total_steps, ckpt,
            )  # fmt: skip
    if watch is not None and accelerator.is_main_process:
        watch.truncate(progress.step)  # points after the checkpoint are scored again
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

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
        start = time.perf_counter()
        window_tokens, window_start = 0, time.perf_counter()
        if progress_fn is not None:
            progress_fn(progress.step, total_steps, {})

        for step in range(progress.step, total_steps):
            micro = next(batches)
            n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
            global_targets = accelerator.reduce(
                torch.tensor(n_targets, device=accelerator.device), "sum"
            )
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
                    share = accelerator.num_processes / global_targets
                    task = token_loss_sum(logits, labels, keep) * share
                    bal = balance_loss(unwrapped) if balance_weight > 0 else logits.new_zeros(())
                    loss = task + balance_weight * bal / len(micro)
                    accelerator.backward(loss)
                task_sum += float(task.detach()) / accelerator.num_processes
                bal_sum += float(bal.detach()) / len(micro)
                step_tokens += int(batch["attention_mask"].sum())
            if cfg.grad_clip is not None:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            step_loss = float(
                accelerator.reduce(torch.tensor(task_sum, device=accelerator.device), "sum")
            )
            if not math.isfinite(step_loss) or not math.isfinite(bal_sum):
                last = latest_checkpoint(run_dir)
                raise TrainingError(
                    f"loss became {step_loss} at step {step + 1}; no version was written",
                    f"lower train.lr or check the data; the last good checkpoint ({last.name if last else 'none'}) "
                    "is kept and the same command resumes from it (add --restart to start over)",
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            progress.step = step + 1
            progress.loss_sum += step_loss
            progress.last_loss = step_loss
            progress.tokens += step_tokens * accelerator.num_processes
            progress.samples += (
                sum(int(b["input_ids"].shape[0]) for b in micro) * accelerator.num_processes
            )
            window_tokens += step_tokens * accelerator.num_processes
            stats: dict[str, Any] = {"loss": step_loss, "balance_loss": bal_sum}
            if progress.step % cfg.log_every == 0 or progress.step == total_steps:
                elapsed = time.perf_counter() - window_start
                line = {
                    "step": progress.step,
                    "loss": round(step_loss, 6),
                    "balance_loss": round(bal_sum, 6),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": progress.tokens,
                    "tokens_per_s": round(window_tokens / max(elapsed, 1e-9), 1),
                    "elapsed_s": round(progress.seconds + time.perf_counter() - start, 3),
                }
                if len(scheduler.get_last_lr()) > 1:
                    line["router_lr"] = scheduler.get_last_lr()[1]
                stats = {**line, "logged": True}
                if accelerator.is_main_process:
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(line) + "\n")
                accelerator.log({k: v for k, v in line.items() if k != "step"}, step=progress.step)
                progress.log_lines += 1
                window_tokens, window_start = 0, time.perf_counter()
            if progress.step % cfg.checkpoint_every == 0 and progress.step < total_steps:
                progress.sampler = sampler.state_dict()
                if accelerator.is_main_process:
                    seconds = progress.seconds
                    progress.seconds = seconds + time.perf_counter() - start
                    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
                    save_checkpoint(
                        run_dir,
                        adapter=adapter_state_dict(unwrapped),
                        optimizer=inner,
                        scheduler=scheduler,
                        progress=progress,
                    )
                    progress.seconds = seconds
                accelerator.wait_for_everyone()
            spent = watch_at(progress.step)
            start, window_start = start + spent, window_start + spent  # timings count training only
            if progress_fn is not None:
                progress_fn(progress.step, total_steps, stats)
    except KeyboardInterrupt:  # Ctrl-C: say what the same command will resume from
        raise interrupted(run_dir, progress.step, total_steps, cfg.checkpoint_every) from None
    seconds = progress.seconds + time.perf_counter() - start
    model.eval()
    return FitResult(progress, resumed_from, total_steps, seconds)


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

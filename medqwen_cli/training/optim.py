"""Optimizer and schedule: AdamW with separate learning rates for routers and experts.

lr(step) = base_lr * factor(step), step = optimizer steps done (the first step uses factor(0))

factor   = (step + 1) / (W + 1)                     for step < W, W = round(warmup_ratio * total)
         = cosine: 0.5 * (1 + cos(pi * min(1, p)))   after the warmup, with
           linear: max(0, 1 - p)                     p = (step - W) / max(1, total - W)
           constant: 1                               the share of post-warmup steps done

The warmup never starts at 0 (the first step would not move) and ends just below 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medqwen_cli.recipe import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters split into experts and routers (each with its own lr)."""
    experts, routers = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (routers if name.endswith("router.weight") else experts).append(param)
    groups = [{"params": experts, "lr": cfg.lr, "name": "experts"}]
    if routers:
        groups.append({"params": routers, "lr": cfg.router_lr or cfg.lr, "name": "routers"})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay, foreach=False)


def lr_factor(step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    """factor(step) of the module docstring."""
    warmup = round(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_ratio, cfg.schedule)
    )

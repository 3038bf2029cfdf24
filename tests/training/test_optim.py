"""The schedule follows optim.py's formula; routers get their own learning rate."""

from __future__ import annotations

import math

import pytest
import torch

from medqwen_cli.recipe import TrainConfig
from medqwen_cli.training.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_rises_from_one_over_w_plus_one_to_one() -> None:
    # total 10, warmup_ratio 0.3: W = 3 warmup steps at 1/4, 2/4, 3/4, then the decay from 1
    factors = [lr_factor(step, 10, 0.3, "constant") for step in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and set(factors[3:]) == {1.0}


@pytest.mark.parametrize(
    ("schedule", "decay"),
    [
        ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * min(1.0, p)))),
        ("linear", lambda p: max(0.0, 1 - p)),
        ("constant", lambda p: 1.0),
    ],
)
def test_decay_after_the_warmup(schedule: str, decay) -> None:
    total, warmup = 20, 4  # warmup_ratio 0.2
    for step in range(warmup, total + 2):
        p = (step - warmup) / (total - warmup)
        assert lr_factor(step, total, 0.2, schedule) == pytest.approx(decay(p))
    assert lr_factor(0, total, 0.0, schedule) == 1.0  # no warmup: the first step at full lr


def test_scheduler_gives_the_first_step_factor_zero_and_routers_their_lr() -> None:
    class Routed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expert = torch.nn.Linear(2, 2)
            self.router = torch.nn.Linear(2, 2, bias=False)

    model = Routed()
    model.expert.bias.requires_grad_(False)
    cfg = TrainConfig(lr=1e-3, router_lr=1e-2, warmup_ratio=0.5, max_steps=4)
    optimizer = build_optimizer(model, cfg)
    assert [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups] == [
        ("experts", 1e-3, 1), ("routers", 1e-2, 1)
    ]  # fmt: skip
    scheduler = build_scheduler(optimizer, cfg, 4)
    assert scheduler.get_last_lr() == pytest.approx([1e-3 / 3, 1e-2 / 3])  # W = 2: factor(0)

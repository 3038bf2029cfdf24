"""Gradient alignment: the first low-rank step with s* mimics a full-rank MoE step at LR eta * lr.

One layer, E experts with gates 1/E (k = E, zero router). A full-rank MoE initialised at W0 and
trained with LR eta * lr moves its effective weight by dW_full = -eta * lr * G / E (G = dL/dW).
One SGD step of the experts at LR lr moves it by dW = s * sum_i w_i (dB_i A_i + B_i dA_i).
For Kaiming-uniform experts (Var A = 1/(3n), B = 0), E[dW] = -lr * s^2 * d / (3n) * G / E, which
equals dW_full exactly when s = s* = sqrt(3 n eta / d). We measure the cosine and the projection
coefficient c = <dW, dW_full> / |dW_full|^2 (c = 1: same step along the full-FT direction).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medqwen_cli.adapters.layer import RoutedLoRALinear
from medqwen_cli.adapters.spectral import init_layer, theory_scale

M, N, R, ETA, LR = 48, 256, 32, 0.1, 1.0


def first_step(method: str, experts: int, scale: float) -> tuple[float, float]:
    """(cosine, c) of the first low-rank update against the full-rank MoE update."""
    torch.manual_seed(0)
    base = nn.Linear(N, M, bias=False).requires_grad_(False)
    d = R // experts
    init = init_layer(
        base.weight, method=method, experts=experts, rank=R, scaling="constant",
        alpha=scale * d, eta=ETA, seed=0,
    )  # fmt: skip
    layer = RoutedLoRALinear(base, init, experts=experts, top_k=experts, router_init_std=0.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, N, generator=gen)  # (tokens, n)
    delta = torch.randn(M, 4, generator=gen) @ torch.randn(4, N, generator=gen)  # task shift
    target = x @ (base.weight + 0.1 * delta).T  # (tokens, m)

    w = base.weight.clone().requires_grad_(True)
    (0.5 * ((x @ w.T - target) ** 2).sum(-1).mean()).backward()
    dw_full = -ETA * LR * w.grad / experts  # (m, n)

    (0.5 * ((layer(x) - target) ** 2).sum(-1).mean()).backward()
    d_a, d_b = -LR * layer.lora_A.grad, -LR * layer.lora_B.grad  # (r, n), (m, r)
    gate = torch.full((R,), 1.0 / experts)  # w_i = 1/E on each expert's d columns
    with torch.no_grad():
        dw = scale * ((d_b * gate) @ layer.lora_A + (layer.lora_B * gate) @ d_a)  # (m, n)
    cos = float((dw * dw_full).sum() / (dw.norm() * dw_full.norm()))
    coef = float((dw * dw_full).sum() / dw_full.norm() ** 2)
    return cos, coef


@pytest.mark.parametrize(("method", "experts"), [("lora", 1), ("moelora", 4)])
def test_theory_scale_matches_full_rank_step(
    method: str, experts: int, record_property: pytest.RecordProperty
) -> None:
    d = R // experts
    s_star = theory_scale(N, ETA, d)
    cos, coef = first_step(method, experts, s_star)
    record_property("cosine", cos)
    record_property("coefficient", coef)
    # Direction: a rank-r step can only see r of n input directions; a random r-dim subspace
    # gives cosine ~ sqrt(r/n). A wrong sign or a broken gradient path gives <= 0.
    assert cos > 0.5 * math.sqrt(R / N), cos
    # Magnitude: s* makes the step the full-rank one, up to sampling noise of A.
    assert abs(math.log(coef)) < math.log(1.5), coef
    # Badly scaled variants break it: 4x off, and (for E > 1) using r instead of d.
    wrong = [4 * s_star, s_star / 4] + ([theory_scale(N, ETA, R)] if experts > 1 else [])
    for s_bad in wrong:
        _, coef_bad = first_step(method, experts, s_bad)
        assert abs(math.log(coef_bad)) > math.log(3), (s_bad, coef_bad)


def test_spectral_experts_step_along_full_rank_direction(
    record_property: pytest.RecordProperty,
) -> None:
    """sslora's first step is a positive-definite map of G on the chosen spectral directions."""
    cos, coef = first_step("sslora", 4, theory_scale(N, ETA, R // 4))
    record_property("cosine", cos)
    record_property("coefficient", coef)
    assert cos > 0.5, cos
    assert coef > 0, coef

"""The routed layer's reference: the same maths as `RoutedLoRALinear.forward`, looped over
experts, for tests and benchmarks to check the dense two-GEMM form against."""

from __future__ import annotations

import torch
from torch import Tensor

from medqwen_cli.adapters.layer import RoutedLoRALinear


def looped_forward(
    layer: RoutedLoRALinear, x: Tensor, expert_inputs: Tensor | None = None
) -> Tensor:
    """Reference for tests and benchmarks: a Python loop over experts, each on its own tokens.

    Same maths as `RoutedLoRALinear.forward` with dropout off: gathers the tokens routed to
    expert i, applies s * w_i * B_i A_i to them, subtracts each expert's share of W_res.
    `expert_inputs` (E, ..., n), e.g. per-expert dropped copies of x, replaces x as the input of
    expert i's A only (router and residual still read x): the reference for per-expert masks.
    """
    y = layer.base_layer(x)  # (..., m)
    xf = x.float().reshape(-1, layer.in_features)  # (N, n)
    d, e, s = layer.expert_rank, layer.experts, layer.scale
    inputs = xf.expand(e, -1, -1) if expert_inputs is None else expert_inputs
    xe = inputs.float().reshape(e, -1, layer.in_features)  # (E, N, n): expert i's input
    out = torch.zeros(xf.shape[0], layer.out_features, device=x.device)  # (N, m)
    if layer.router is not None:
        routing = layer.router(xf)
        gates, chosen = routing.gates, routing.indices  # (N, E), (N, k)
    else:
        gates = xf.new_ones(xf.shape[0], 1)  # (N, 1)
        chosen = torch.zeros(xf.shape[0], 1, dtype=torch.long, device=x.device)  # (N, 1)
    for i in range(e):
        block = slice(i * d, (i + 1) * d)
        rows = (chosen == i).any(dim=-1).nonzero().squeeze(1)  # tokens routed to expert i
        xi = xe[i].index_select(0, rows)  # (N_i, n)
        yi = (xi @ layer.lora_A[block].t()) @ layer.lora_B[:, block].t()  # (N_i, m)
        out = out.index_add(0, rows, yi * gates.index_select(0, rows)[:, i : i + 1] * s)
        if layer.init_A is not None:
            res_i = (xf @ layer.init_A[block].t()) @ layer.init_B[:, block].t()  # (N, m)
            out = out - res_i * (s / e)
    return y + out.reshape(*x.shape[:-1], -1).to(y.dtype)

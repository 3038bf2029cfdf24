"""Top-k token router and its load-balance loss.

For a token x (n) and router weight W_r (E x n, no bias):

    z = W_r x,   p = softmax(z),   K = top-k(p),   w_i = p_i / sum_{j in K} p_j  (i in K, else 0)

Load balance over the non-padding tokens T of a forward, with k slots per token (GOAT's
normalisation, Facico/GOAT-PEFT: slot counts over tokens, so sum_i f_i = k):

    f_i = #{(t, slot) : expert i chosen} / |T|         (not differentiable)
    P_i = mean_{t in T} p_i(t)                          (mean probability, differentiable)
    L_b = E * sum_i f_i P_i                             (= k for a perfectly uniform router)

The model's balance loss is the sum of L_b over its routed layers (`state.balance_loss`), so
each router gets the same push whatever the depth of the model.

Scores are computed in float32 with autocast off: the softmax over E logits and the top-k choice
are sensitive to bf16 rounding (ties flip, small experts starve), and the cost is one E x n GEMM.

A zero router (W_r = 0) is a supported state: p is uniform, and with k = E every w_i = 1/E, which
is exactly the gate the residual compensation assumes. The default init is a small seeded normal
(std 0.02, the initializer_range of Qwen2's own linear layers): logits stay near zero so the
initial probabilities are near uniform (L_b close to 1, w_i close to 1/k), yet different tokens pick
different experts from the first step; a zero router would send every token to the same first k
experts (ties) and leave the other experts without gradient until the router moves.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

DEFAULT_ROUTER_INIT_STD = 0.02


class Routing(NamedTuple):
    gates: Tensor  # (..., E) renormalised top-k weights, zero for unselected experts
    probs: Tensor  # (..., E) softmax probabilities
    indices: Tensor  # (..., k) chosen experts, most probable first


class TopKRouter(nn.Module):
    """Linear n -> E without bias, softmax, top-k, renormalised gates; float32 throughout."""

    def __init__(
        self,
        in_features: int,
        experts: int,
        top_k: int,
        *,
        init_std: float = DEFAULT_ROUTER_INIT_STD,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k ({top_k}) must be in [1, experts={experts}]")
        self.in_features, self.experts, self.top_k = in_features, experts, top_k
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(experts, in_features, generator=gen) * init_std  # (E, n)
        self.weight = nn.Parameter(w)

    def forward(self, x: Tensor) -> Routing:
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # (..., E)
            probs = logits.softmax(dim=-1)  # (..., E)
            top_p, top_i = probs.topk(self.top_k, dim=-1)  # (..., k)
            weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (..., k)
            gates = torch.zeros_like(probs).scatter(-1, top_i, weights)  # (..., E)
        return Routing(gates, probs, top_i)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, experts={self.experts}, top_k={self.top_k}"


def _token_weights(probs: Tensor, mask: Tensor | None) -> Tensor:
    """1.0 for tokens that count, 0.0 for padding: (N,). A mask of another shape is ignored."""
    tokens = probs.shape[:-1]
    if mask is None or tuple(mask.shape) != tuple(tokens):
        return probs.new_ones(tokens.numel())
    return mask.reshape(-1).to(device=probs.device, dtype=probs.dtype)


def expert_counts(indices: Tensor, experts: int, mask: Tensor | None = None) -> Tensor:
    """Top-k slots routed to each expert over the counted tokens: LongTensor (E,)."""
    k = indices.shape[-1]
    flat = indices.reshape(-1)  # (N*k,)
    tokens = indices.shape[:-1]
    if mask is None or tuple(mask.shape) != tuple(tokens):
        keep = torch.ones_like(flat)
    else:
        keep = mask.reshape(-1).to(device=flat.device, dtype=torch.long).repeat_interleave(k)
    return torch.zeros(experts, dtype=torch.long, device=flat.device).index_add_(0, flat, keep)


def load_balance_loss(probs: Tensor, indices: Tensor, mask: Tensor | None = None) -> Tensor:
    """L_b = E * sum_i f_i P_i over non-padding tokens (mask: 1 = token, 0 = padding), with
    f_i = slots of expert i / tokens (sum_i f_i = k): k for a uniform router, k * E collapsed.

    probs (..., E), indices (..., k), mask (...) or None; a mask whose shape does not match the
    token dimensions (e.g. vision patches) is ignored and every token counts. Returns a 0-d tensor;
    0 when no token counts.
    """
    experts, k = probs.shape[-1], indices.shape[-1]  # (E,), k slots per token
    p = probs.reshape(-1, experts)  # (N, E)
    w = _token_weights(probs, mask)  # (N,)
    n_tokens = w.sum()
    slots = torch.zeros(experts, dtype=p.dtype, device=p.device)
    slots = slots.index_add_(0, indices.reshape(-1), w.repeat_interleave(k))  # (E,)
    f = slots / n_tokens.clamp_min(1.0)  # (E,), sums to k
    # where, not p * w: padded positions may hold NaN hidden states (fully masked attention rows)
    kept = torch.where(w[:, None] > 0, p, torch.zeros_like(p))  # (N, E)
    mean_p = (kept * w[:, None]).sum(dim=0) / n_tokens.clamp_min(1.0)  # (E,)
    return experts * (f.detach() * mean_p).sum()

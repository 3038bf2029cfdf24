"""Spectral initialisation of routed LoRA experts (pure torch, one weight at a time).

For a frozen weight W0 (m x n, out x in) with SVD W0 = U diag(sigma) V^T (sigma descending),
h = min(m, n), E experts of rank d (total rank r = E * d) and scale s:

    segments   I_j = [j*t, j*t + d), t = floor(h / E)   (spread; also principal, minor, random)
    factors    B_j0 = U_Ij diag(sigma_Ij)^(1/2) / sqrt(s*rho)        (m x d)
               A_j0 = diag(sigma_Ij)^(1/2) V_Ij^T / sqrt(s*rho)      (d x n)
    so that    s * B_j0 A_j0 = U_Ij diag(sigma_Ij) V_Ij^T / rho      (independent of s)
    residual   W_res = (s / E) * sum_j B_j0 A_j0                     (kept as the frozen factors)
    scale      s = sqrt(3 * n * eta / d) (theory) or s = alpha / d (constant)

The theory scale makes the first update of a Kaiming-uniform expert (Var A = 1/(3n)) match, in
expectation, the update of a full-rank expert trained with eta times the adapter learning rate:
s^2 * d / (3n) = eta.

`init_layer` returns the tensors of one adapted layer; `init-experts` calls it tensor by tensor
while streaming a checkpoint, so it takes only the weight, plain settings and a per-layer seed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch
from torch import Tensor

from medqwen_cli.errors import AdapterError

MethodName = Literal["sslora", "pissa", "lora", "moelora"]
SegmentKind = Literal["spread", "principal", "minor", "random"]
SPECTRAL_METHODS = ("sslora", "pissa")
SINGLE_EXPERT_METHODS = ("lora", "pissa")


def layer_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for one layer (blake2b of seed and name; never Python's hash())."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def tall_svd(weight: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD W = U diag(sigma) Vh computed on the tall orientation (faster for wide W).

    Returns U (m x h), sigma (h), Vh (h x n) in `dtype`, sigma descending.
    """
    w = weight.detach().to(dtype)  # (m, n)
    if w.shape[0] >= w.shape[1]:
        return torch.linalg.svd(w, full_matrices=False)
    u_t, sigma, vh_t = torch.linalg.svd(w.T, full_matrices=False)  # W^T = U' S V'^T
    return vh_t.T, sigma, u_t.T  # W = V' S U'^T: swap the roles back


def segment_indices(
    h: int, experts: int, expert_rank: int, kind: SegmentKind = "spread", seed: int = 0
) -> Tensor:
    """Disjoint singular-index sets, one row per expert: LongTensor (E, d)."""
    r = experts * expert_rank
    if r > h:
        raise AdapterError(
            f"rank {r} ({experts} experts x {expert_rank}) exceeds min(m, n) = {h}",
            "lower adapter.rank or exclude this layer",
        )
    if kind == "spread":
        t = h // experts  # stride over the whole spectrum; t >= d because h >= E*d
        starts = torch.arange(experts) * t  # (E,)
        return starts[:, None] + torch.arange(expert_rank)[None, :]  # (E, d)
    if kind == "principal":
        return torch.arange(r).view(experts, expert_rank)
    if kind == "minor":
        return torch.arange(h - r, h).view(experts, expert_rank)
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(h, generator=gen)[:r].view(experts, expert_rank)  # (E, d)
        return chosen.sort(dim=1).values
    raise AdapterError(f"unknown segments {kind!r}", "use spread, principal, minor or random")


def theory_scale(fan_in: int, eta: float, d: int) -> float:
    """s* = sqrt(3 * fan_in * eta / d)."""
    return math.sqrt(3.0 * fan_in * eta / d)


def layer_scale(scaling: str, fan_in: int, expert_rank: int, alpha: float, eta: float) -> float:
    """The scale s of one layer under the `theory` or `constant` rule."""
    if scaling == "theory":
        return theory_scale(fan_in, eta, expert_rank)
    if scaling == "constant":
        return alpha / expert_rank
    raise AdapterError(f"unknown scaling {scaling!r}", "use theory or constant")


def spectral_factors(
    u: Tensor, sigma: Tensor, vh: Tensor, indices: Tensor, s: float, rho: float
) -> tuple[Tensor, Tensor]:
    """Concatenated expert factors (A0: r x n, B0: m x r), experts in row order of `indices`."""
    flat = indices.reshape(-1).to(u.device)  # (r,) expert j owns positions [j*d, (j+1)*d)
    root = sigma[flat].sqrt() / math.sqrt(s * rho)  # (r,)
    b0 = u[:, flat] * root[None, :]  # (m, r)
    a0 = root[:, None] * vh[flat, :]  # (r, n)
    return a0, b0


def kaiming_uniform(rows: int, fan_in: int, seed: int) -> Tensor:
    """U(-1/sqrt(n), 1/sqrt(n)) (nn.Linear's default, Var = 1/(3n)), seeded: (rows, fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, fan_in, generator=gen) * 2.0 - 1.0) / math.sqrt(fan_in)


def init_layer(
    weight: Tensor,
    *,
    method: MethodName = "sslora",
    experts: int = 8,
    rank: int = 32,
    scaling: str = "theory",
    alpha: float = 64.0,
    eta: float = 0.1,
    rho: float = 10.0,
    segments: SegmentKind = "spread",
    seed: int = 0,
    svd_dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Init tensors of one layer with weight W0 (m x n), all float32 on W0's device.

    Keys: lora_A (r x n) and lora_B (m x r), the trainable starting values; scale (0-d);
    init_A (r x n) and init_B (m x r), the frozen spectral factors, for sslora and pissa only.
    lora and pissa are single-expert (E = 1, d = r). `seed` is the layer's own seed
    (see `layer_seed`); the SVD is skipped for lora and moelora.
    """
    if method not in ("sslora", "pissa", "lora", "moelora"):
        raise AdapterError(f"unknown method {method!r}", "use sslora, moelora, lora or pissa")
    if weight.dim() != 2:
        raise AdapterError(f"expected a 2-D weight (out x in), got shape {tuple(weight.shape)}")
    m, n = weight.shape
    e = 1 if method in SINGLE_EXPERT_METHODS else experts
    if e < 1 or rank % e:
        raise AdapterError(f"rank {rank} is not divisible by experts {e}", "use rank = E * d")
    d = rank // e
    # lora is the classic baseline: s = alpha / r whatever the recipe's scaling rule
    s = layer_scale("constant" if method == "lora" else scaling, n, d, alpha, eta)
    device = weight.device
    out: dict[str, Tensor] = {"scale": torch.tensor(s, dtype=torch.float32, device=device)}
    if method in SPECTRAL_METHODS:
        kind: SegmentKind = "principal" if method == "pissa" else segments
        indices = segment_indices(min(m, n), e, d, kind, seed)  # (E, d)
        u, sigma, vh = tall_svd(weight, svd_dtype)
        a0, b0 = spectral_factors(u, sigma, vh, indices, s, rho)
        out["init_A"] = a0.to(torch.float32).contiguous()  # (r, n)
        out["init_B"] = b0.to(torch.float32).contiguous()  # (m, r)
        out["lora_A"] = out["init_A"].clone()
        out["lora_B"] = out["init_B"].clone()
    else:  # lora, moelora
        # Each expert's block of rows is Kaiming-uniform with fan-in n; B = 0 so W = W0 at init.
        out["lora_A"] = kaiming_uniform(rank, n, seed).to(device)  # (r, n)
        out["lora_B"] = torch.zeros(m, rank, dtype=torch.float32, device=device)  # (m, r)
    return out

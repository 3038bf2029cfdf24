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

Only r of the h singular triplets are used, so the default route (`svd_route="auto"` with float32)
computes just those, exactly, from the Gram matrix of the short side in float64:

    G = W^T W (h x h, W oriented tall, M x h)     float64, row blocks, lower triangle only
    G = Q T Q^T                                   dsytrd: tridiagonal T, Householder Q (h^3 * 4/3)
    T z_i = lambda_i z_i  for the r chosen i      dstebz (bisection by index) + dstein
    v_i = Q z_i,  sigma_i = sqrt(lambda_i),  u_i = W v_i / sigma_i    (float64)

No full U, V or eigenbasis is ever formed. Squaring W squares its conditioning, but in float64
the error on sigma_i is about n * eps64 * (sigma_max / sigma_i)^2, below the float32 SVD's
n * eps32 * sigma_max / sigma_i for any sigma_i > 1e-8 sigma_max (vectors likewise); a chosen
sigma_i under `GRAM_MIN_RATIO` * sigma_max falls back to a float64 SVD. Measured in
benchmarks/init_experts.py. On CUDA, or without scipy, the Gram route uses torch's float64 eigh.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from medqwen_cli.adapters.config import METHODS, Method, is_spectral, num_experts
from medqwen_cli.errors import AdapterError

SvdRoute = Literal["auto", "svd", "gram"]
SegmentKind = Literal["spread", "principal", "minor", "random"]
GRAM_MIN_RATIO = 1e-5  # a chosen sigma below this * sigma_max: use a float64 SVD instead
_GRAM_BLOCK_ROWS = 2048  # rows of W converted to float64 at a time
_GRAM_PANEL = 512  # columns of the Gram's lower triangle per product


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


def _tall(weight: Tensor) -> tuple[Tensor, bool]:
    """W oriented tall (M x h, M >= h) and whether it was transposed."""
    flip = weight.shape[0] < weight.shape[1]
    return (weight.T if flip else weight), flip


def _gram64(wt: Tensor) -> Tensor:
    """W^T W for tall W (M x h): (h, h) float64, column-major, lower triangle (upper zero).

    Row blocks of W are converted to float64 one at a time (memory), and each block adds only
    the panels on or below the diagonal (half the flops of a full product, as dsyrk).
    """
    h = wt.shape[1]
    # column-major storage: LAPACK takes it in place (no h x h copy)
    g = torch.zeros(h, h, dtype=torch.float64, device=wt.device).T
    for rows in wt.split(_GRAM_BLOCK_ROWS):
        blk = rows.to(torch.float64)  # (b, h)
        for j in range(0, h, _GRAM_PANEL):
            panel = slice(j, j + _GRAM_PANEL)
            g[j:, panel].addmm_(blk[:, j:].T, blk[:, panel])  # (h-j, p) block column
    return g


def _lapack() -> Any:
    """scipy.linalg.lapack, or None without scipy."""
    try:
        from scipy.linalg import lapack
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return None
    return lapack


def _selected_eigh(g: Tensor, ascending: np.ndarray) -> tuple[Tensor, Tensor]:
    """Eigenpairs of symmetric G (lower triangle) at ascending positions: (k,), (h, k), float64.

    Householder tridiagonalisation, bisection for the chosen eigenvalues only (one call per
    contiguous run), inverse iteration for their vectors, then the reflectors applied to those
    k vectors alone.
    """
    lapack = _lapack()
    if g.device.type != "cpu" or lapack is None:
        lam, vecs = torch.linalg.eigh(g, UPLO="L")  # ascending, the full eigenbasis
        pos = torch.as_tensor(ascending, device=g.device)
        return lam[pos], vecs[:, pos]
    with _blas_threads():
        return _selected_eigh_lapack(lapack, g.numpy(), ascending)


def _blas_threads() -> Any:
    """scipy's own BLAS (OpenBLAS) limited to torch's thread count, when threadpoolctl exists.

    Two thread pools of different sizes (torch at 1 thread, OpenBLAS at all cores) made the
    LAPACK part ~10x slower on a loaded 2-core machine (benchmarks/init_experts.py).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=torch.get_num_threads(), user_api="blas")


def _selected_eigh_lapack(
    lapack: Any, g: np.ndarray, ascending: np.ndarray
) -> tuple[Tensor, Tensor]:
    h = g.shape[0]
    lwork = int(lapack.dsytrd_lwork(h, lower=1)[0])
    c, d, e, tau, info = lapack.dsytrd(g, lower=1, lwork=lwork, overwrite_a=1)
    _check(info, "dsytrd")
    values, blocks = [], []
    isplit = None
    runs = np.split(ascending, np.flatnonzero(np.diff(ascending) != 1) + 1)
    for run in runs:  # range "I" = 2; LAPACK counts from 1; order "B": by split-off block
        found, w, iblock, isplit, info = lapack.dstebz(
            d, e, 2, 0.0, 1.0, int(run[0]) + 1, int(run[-1]) + 1, 0.0, "B"
        )
        _check(info, "dstebz")
        values.append(w[:found])
        blocks.append(iblock[:found])
    w_all, b_all = np.concatenate(values), np.concatenate(blocks)
    order = np.lexsort((w_all, b_all))  # dstein wants them grouped by block, ascending
    iblock = np.zeros(h, dtype=np.int32)
    iblock[: len(order)] = b_all[order]
    z, info = lapack.dstein(d, e, w_all[order], iblock, isplit)
    _check(info, "dstein")
    for i in range(h - 2, -1, -1):  # Q = H(1) ... H(h-1): apply H(h-1) first
        if tau[i] == 0.0:
            continue
        v = c[i + 1 :, i].copy()  # (h-i-1,); v(i+1) = 1 is implicit
        v[0] = 1.0
        z[i + 1 :] -= tau[i] * np.outer(v, v @ z[i + 1 :])
    z = z[:, np.argsort(order)]  # columns back in the order of w_all
    asc = np.argsort(w_all, kind="stable")  # a split matrix gives each run block by block
    return torch.from_numpy(w_all[asc]), torch.from_numpy(np.ascontiguousarray(z[:, asc]))


def _check(info: int, routine: str) -> None:
    if info != 0:
        raise AdapterError(f"LAPACK {routine} failed (info={info})", "use svd_route='svd'")


def gram_triplets(weight: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Singular triplets of W at `positions` (descending order) from its float64 Gram matrix.

    Returns U_sel (m x k), sigma_sel (k), Vh_sel (k x n) in float64, in the order of `positions`,
    or None when a chosen sigma is below GRAM_MIN_RATIO * sigma_max (the caller then uses a
    float64 SVD).
    """
    wt, flip = _tall(weight.detach())  # (M, h)
    h = wt.shape[1]
    wanted = positions.reshape(-1).cpu().numpy()  # (k,) descending positions
    if wanted.size == 0 or wanted.min() < 0 or wanted.max() >= h:
        raise AdapterError(f"singular indices must lie in [0, {h}), got {wanted.tolist()[:8]}")
    ascending = np.unique(np.concatenate([h - 1 - wanted, [h - 1]]))  # + sigma_max
    lam, vecs = _selected_eigh(_gram64(wt), ascending)  # (k',), (h, k')
    sigma = lam.clamp_min(0).sqrt()  # (k',)
    sigma_max = float(sigma[-1])
    col = {int(a): j for j, a in enumerate(ascending)}
    take = torch.tensor([col[h - 1 - int(i)] for i in wanted], device=vecs.device)
    sigma, vecs = sigma[take], vecs[:, take]  # (k,), (h, k)
    if sigma_max == 0.0 or float(sigma.min()) < GRAM_MIN_RATIO * sigma_max:
        return None
    vecs = vecs.to(wt.device)
    sigma = sigma.to(wt.device)
    u = torch.cat([rows.to(torch.float64) @ vecs for rows in wt.split(_GRAM_BLOCK_ROWS)])
    u = u / sigma  # (M, k): u_i = W v_i / sigma_i
    # tall W = U S V^T with V = vecs; a transposed (wide) W = V S U^T
    return (vecs, sigma, u.T) if flip else (u, sigma, vecs.T)


def spectral_triplets(
    weight: Tensor,
    positions: Tensor,
    *,
    route: SvdRoute = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """U_sel (m x k), sigma_sel (k), Vh_sel (k x n) for the singular indices `positions`.

    route "svd": the thin SVD in `dtype` (`tall_svd`), then indexed. "gram": the exact selected
    triplets from the float64 Gram matrix (float64 SVD fallback, see GRAM_MIN_RATIO). "auto":
    "gram" for float32 requests on CPU, which it matches or beats in accuracy, else "svd".
    """
    flat = positions.reshape(-1)
    if route == "auto":
        route = "gram" if dtype == torch.float32 and weight.device.type == "cpu" else "svd"
    if route == "gram":
        found = gram_triplets(weight, flat)
        if found is not None:
            return found
        dtype = torch.float64
    elif route != "svd":
        raise AdapterError(f"unknown svd route {route!r}", "use auto, svd or gram")
    u, sigma, vh = tall_svd(weight, dtype)
    idx = flat.to(u.device)
    return u[:, idx], sigma[idx], vh[idx]


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
    method: Method = "sslora",
    experts: int = 8,
    rank: int = 32,
    scaling: str = "theory",
    alpha: float = 64.0,
    eta: float = 1.0,
    rho: float = 10.0,
    segments: SegmentKind = "spread",
    seed: int = 0,
    svd_dtype: torch.dtype = torch.float32,
    svd_route: SvdRoute = "auto",
) -> dict[str, Tensor]:
    """Init tensors of one layer with weight W0 (m x n), all float32 on W0's device.

    Keys: lora_A (r x n) and lora_B (m x r), the trainable starting values; scale (0-d);
    init_A (r x n) and init_B (m x r), the frozen spectral factors, for sslora and pissa only.
    lora and pissa are single-expert (E = 1, d = r). `seed` is the layer's own seed
    (see `layer_seed`); the SVD is skipped for lora and moelora. `svd_route` picks how the chosen
    triplets are computed (see `spectral_triplets`).
    """
    if method not in METHODS:
        raise AdapterError(f"unknown method {method!r}", "use " + ", ".join(METHODS))
    if weight.dim() != 2:
        raise AdapterError(f"expected a 2-D weight (out x in), got shape {tuple(weight.shape)}")
    m, n = weight.shape
    e = num_experts(method, experts)
    if e < 1 or rank % e:
        raise AdapterError(f"rank {rank} is not divisible by experts {e}", "use rank = E * d")
    d = rank // e
    # every method follows the recipe's rule with its own d (lora, pissa: d = r), so that at one
    # learning rate the methods take steps of the same size (forgetting is not confounded with
    # a larger step)
    s = layer_scale(scaling, n, d, alpha, eta)
    device = weight.device
    out: dict[str, Tensor] = {"scale": torch.tensor(s, dtype=torch.float32, device=device)}
    if is_spectral(method):
        kind: SegmentKind = "principal" if method == "pissa" else segments
        indices = segment_indices(min(m, n), e, d, kind, seed)  # (E, d)
        u, sigma, vh = spectral_triplets(weight, indices, route=svd_route, dtype=svd_dtype)
        own = torch.arange(indices.numel()).view_as(indices)  # triplets come in `indices` order
        a0, b0 = spectral_factors(u, sigma, vh, own, s, rho)
        out["init_A"] = a0.to(torch.float32).contiguous()  # (r, n)
        out["init_B"] = b0.to(torch.float32).contiguous()  # (m, r)
        out["lora_A"] = out["init_A"].clone()
        out["lora_B"] = out["init_B"].clone()
    else:  # lora, moelora
        # Each expert's block of rows is Kaiming-uniform with fan-in n; B = 0 so W = W0 at init.
        out["lora_A"] = kaiming_uniform(rank, n, seed).to(device)  # (r, n)
        out["lora_B"] = torch.zeros(m, rank, dtype=torch.float32, device=device)  # (m, r)
    return out

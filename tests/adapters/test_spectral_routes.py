"""The Gram route to the chosen singular triplets matches a float64 SVD (tall, wide, ill-conditioned)."""

from __future__ import annotations

import pytest
import torch

from medqwen_cli.adapters.spectral import (
    gram_triplets,
    init_layer,
    segment_indices,
    spectral_triplets,
)


def conditioned(m: int, n: int, decades: float, seed: int = 0) -> torch.Tensor:
    """W = Q1 diag(logspace(0, -decades)) Q2^T in float64: condition number 10**decades."""
    gen = torch.Generator().manual_seed(seed)
    h = min(m, n)
    q1, _ = torch.linalg.qr(torch.randn(m, h, dtype=torch.float64, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(n, h, dtype=torch.float64, generator=gen))
    return (q1 * torch.logspace(0, -decades, h, dtype=torch.float64)) @ q2.T


def reference(w: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma at `positions` and the rank-k product U S V^T of those triplets, float64 SVD."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return s[positions], u[:, positions] * s[positions] @ vh[positions]


@pytest.mark.parametrize("shape", [(96, 64), (64, 96), (80, 80), (400, 48)])
@pytest.mark.parametrize("kind", ["spread", "principal", "minor", "random"])
def test_gram_route_matches_full_svd(shape: tuple[int, int], kind: str) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    positions = segment_indices(min(shape), 4, 3, kind, seed=2).reshape(-1)  # type: ignore[arg-type]
    found = gram_triplets(w, positions)
    assert found is not None
    u, s, vh = found
    assert u.shape == (shape[0], 12) and s.shape == (12,) and vh.shape == (12, shape[1])
    sigma, product = reference(w, positions)
    torch.testing.assert_close(s, sigma, atol=0, rtol=1e-7)
    err = float((u * s @ vh - product).norm() / product.norm())
    assert err < 1e-8, err  # a float32 SVD reaches ~1e-6 at best
    eye = torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(u.T @ u, eye, atol=1e-7, rtol=0)  # cond 1e4 here
    torch.testing.assert_close(vh @ vh.T, eye, atol=1e-7, rtol=0)


@pytest.mark.parametrize("shape", [(120, 80), (80, 120)])
@pytest.mark.parametrize("decades", [2.0, 4.0])
def test_gram_route_on_ill_conditioned_weights(shape: tuple[int, int], decades: float) -> None:
    """Condition 1e4: the float64 Gram still beats a float32 SVD by orders of magnitude."""
    w = conditioned(*shape, decades).float()
    positions = segment_indices(min(shape), 8, 2, "spread").reshape(-1)
    u, s, vh = spectral_triplets(w, positions)  # auto: the Gram route, float32 request
    sigma, product = reference(w, positions)
    torch.testing.assert_close(s.double(), sigma, atol=0, rtol=1e-7)
    err = float((u.double() * s.double() @ vh.double() - product).norm() / product.norm())
    u32, s32, vh32 = spectral_triplets(w, positions, route="svd")
    err32 = float((u32.double() * s32.double() @ vh32.double() - product).norm() / product.norm())
    assert err < 1e-9 and err < err32


def test_tiny_singular_values_fall_back_to_float64_svd() -> None:
    w = conditioned(90, 60, 9.0)  # the spread segments reach sigma ~ 1e-8 sigma_max
    positions = segment_indices(60, 4, 3, "spread").reshape(-1)
    assert gram_triplets(w, positions) is None
    u, s, vh = spectral_triplets(w, positions)
    assert s.dtype == torch.float64
    sigma, product = reference(w, positions)
    torch.testing.assert_close(s, sigma, atol=1e-14, rtol=1e-9)
    torch.testing.assert_close(u * s @ vh, product, atol=1e-12, rtol=0)
    rank_deficient = torch.randn(50, 5) @ torch.randn(5, 40)
    assert gram_triplets(rank_deficient, segment_indices(40, 4, 3).reshape(-1)) is None


@pytest.mark.parametrize("method", ["sslora", "pissa"])
def test_init_layer_routes_agree(method: str) -> None:
    w = torch.randn(72, 40, generator=torch.Generator().manual_seed(4))
    kwargs = dict(method=method, experts=4, rank=8, seed=3)
    gram = init_layer(w, svd_route="gram", **kwargs)  # type: ignore[arg-type]
    svd64 = init_layer(w, svd_route="svd", svd_dtype=torch.float64, **kwargs)  # type: ignore[arg-type]
    for key in ("init_A", "init_B"):
        assert gram[key].dtype == torch.float32
    d = 8 if method == "pissa" else 2
    for j in range(8 // d):  # per-expert products (signs of singular vectors are free)
        block = slice(j * d, (j + 1) * d)
        got = gram["init_B"][:, block] @ gram["init_A"][block]
        want = svd64["init_B"][:, block] @ svd64["init_A"][block]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_unknown_route_is_an_error() -> None:
    from medqwen_cli.errors import AdapterError

    with pytest.raises(AdapterError, match="svd route"):
        spectral_triplets(torch.randn(8, 8), torch.arange(2), route="qr")  # type: ignore[arg-type]

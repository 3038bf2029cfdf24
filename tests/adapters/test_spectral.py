"""Invariants of the spectral init: SVD, segments, factors, scales, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from medqwen_cli.adapters.spectral import (
    init_layer,
    layer_scale,
    layer_seed,
    segment_indices,
    tall_svd,
    theory_scale,
)
from medqwen_cli.errors import AdapterError

SHAPES = [(48, 40), (40, 48)]  # tall and wide


def weight(m: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_tall_svd_reconstructs_with_orthonormal_factors(shape: tuple[int, int]) -> None:
    w = weight(*shape)
    u, sigma, vh = tall_svd(w)
    h = min(shape)
    assert u.shape == (shape[0], h) and sigma.shape == (h,) and vh.shape == (h, shape[1])
    torch.testing.assert_close(u @ torch.diag(sigma) @ vh, w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(u.T @ u, torch.eye(h), atol=1e-5, rtol=0)
    torch.testing.assert_close(vh @ vh.T, torch.eye(h), atol=1e-5, rtol=0)
    assert torch.all(sigma[:-1] >= sigma[1:])
    u64, s64, _ = tall_svd(w, torch.float64)
    assert s64.dtype == torch.float64
    torch.testing.assert_close(s64.float(), sigma, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["spread", "principal", "minor", "random"])
@pytest.mark.parametrize("h", [40, 37])
def test_segments_disjoint_and_in_range(kind: str, h: int) -> None:
    idx = segment_indices(h, experts=4, expert_rank=3, kind=kind, seed=7)  # type: ignore[arg-type]
    assert idx.shape == (4, 3)
    flat = idx.reshape(-1)
    assert flat.unique().numel() == 12, "segments overlap"
    assert int(flat.min()) >= 0 and int(flat.max()) < h


def test_segment_layouts() -> None:
    t = 37 // 4
    spread = segment_indices(37, 4, 3, "spread")
    assert spread[:, 0].tolist() == [0, t, 2 * t, 3 * t]
    assert segment_indices(37, 4, 3, "principal").reshape(-1).tolist() == list(range(12))
    assert segment_indices(37, 4, 3, "minor").reshape(-1).tolist() == list(range(25, 37))
    a, b = segment_indices(37, 4, 3, "random", seed=1), segment_indices(37, 4, 3, "random", seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, segment_indices(37, 4, 3, "random", seed=2))
    with pytest.raises(AdapterError, match="exceeds min"):
        segment_indices(10, 4, 3, "spread")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["spread", "random"])
def test_expert_factors_reproduce_damped_segments(shape: tuple[int, int], kind: str) -> None:
    w, rho, e, d = weight(*shape, seed=3), 10.0, 4, 3
    init = init_layer(w, method="sslora", experts=e, rank=e * d, rho=rho, segments=kind, seed=5)
    s = float(init["scale"])
    assert s == pytest.approx(theory_scale(shape[1], 1.0, d))  # eta defaults to 1 (GOAT)
    u, sigma, vh = tall_svd(w, torch.float64)
    idx = segment_indices(min(shape), e, d, kind, seed=5)  # type: ignore[arg-type]
    a0, b0 = init["init_A"].double(), init["init_B"].double()
    assert a0.shape == (e * d, shape[1]) and b0.shape == (shape[0], e * d)
    for j in range(e):
        block, ij = slice(j * d, (j + 1) * d), idx[j]
        expected = u[:, ij] @ torch.diag(sigma[ij]) @ vh[ij] / rho
        torch.testing.assert_close(s * b0[:, block] @ a0[block], expected, atol=1e-5, rtol=1e-4)
        u_i = u[:, ij]
        torch.testing.assert_close(u_i.T @ u_i, torch.eye(d, dtype=u.dtype), atol=1e-10, rtol=0)
    # Columns of B0 (rows of A0) are orthogonal across all experts: disjoint singular directions.
    gram_b = b0.T @ b0
    flat = idx.reshape(-1)
    torch.testing.assert_close(gram_b, torch.diag(sigma[flat] / (s * rho)), atol=1e-5, rtol=1e-4)
    gram_a = a0 @ a0.T
    torch.testing.assert_close(gram_a, torch.diag(sigma[flat] / (s * rho)), atol=1e-5, rtol=1e-4)
    assert torch.equal(init["lora_A"], init["init_A"]) and torch.equal(
        init["lora_B"], init["init_B"]
    )


def test_product_independent_of_scale() -> None:
    w = weight(32, 40)
    theory = init_layer(w, method="sslora", experts=2, rank=4, scaling="theory")
    const = init_layer(w, method="sslora", experts=2, rank=4, scaling="constant", alpha=32.0)
    assert float(const["scale"]) == pytest.approx(16.0)  # alpha / d
    prod_t = theory["scale"] * theory["init_B"] @ theory["init_A"]
    prod_c = const["scale"] * const["init_B"] @ const["init_A"]
    torch.testing.assert_close(prod_t, prod_c, atol=1e-5, rtol=1e-4)


def test_scales() -> None:
    assert theory_scale(64, 0.1, 2) == pytest.approx(math.sqrt(3 * 64 * 0.1 / 2))
    assert layer_scale("constant", 64, 4, 64.0, 0.1) == 16.0
    assert layer_scale("theory", 64, 4, 64.0, 0.1) == pytest.approx(theory_scale(64, 0.1, 4))
    with pytest.raises(AdapterError):
        layer_scale("other", 64, 4, 64.0, 0.1)


def test_pissa_takes_principal_triplets_single_expert() -> None:
    w, rho, r = weight(40, 32), 10.0, 6
    init = init_layer(w, method="pissa", experts=8, rank=r, rho=rho, scaling="constant", alpha=12.0)
    assert float(init["scale"]) == pytest.approx(12.0 / r)  # d = r: pissa ignores `experts`
    u, sigma, vh = tall_svd(w, torch.float64)
    expected = u[:, :r] @ torch.diag(sigma[:r]) @ vh[:r] / rho
    got = init["scale"].double() * init["init_B"].double() @ init["init_A"].double()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "moelora"])
def test_random_methods_kaiming_a_zero_b_no_frozen_init(method: str) -> None:
    w = weight(24, 50)
    init = init_layer(w, method=method, experts=4, rank=8, scaling="constant", alpha=16.0, seed=3)  # type: ignore[arg-type]
    assert set(init) == {"lora_A", "lora_B", "scale"}
    assert init["lora_A"].shape == (8, 50) and init["lora_B"].shape == (24, 8)
    assert torch.count_nonzero(init["lora_B"]) == 0
    assert float(init["lora_A"].abs().max()) <= 1 / math.sqrt(50)
    d = 8 if method == "lora" else 2
    assert float(init["scale"]) == pytest.approx(16.0 / d)
    again = init_layer(w, method=method, experts=4, rank=8, seed=3)  # type: ignore[arg-type]
    assert torch.equal(again["lora_A"], init["lora_A"])
    other = init_layer(w, method=method, experts=4, rank=8, seed=4)  # type: ignore[arg-type]
    assert not torch.equal(other["lora_A"], init["lora_A"])


def test_bad_arguments() -> None:
    with pytest.raises(AdapterError, match="divisible"):
        init_layer(weight(16, 16), method="sslora", experts=3, rank=8)
    with pytest.raises(AdapterError, match="exceeds"):
        init_layer(weight(16, 8), method="sslora", experts=4, rank=16)
    with pytest.raises(AdapterError, match="2-D"):
        init_layer(torch.zeros(4, 4, 4), method="lora", rank=2)
    with pytest.raises(AdapterError, match="method"):
        init_layer(weight(16, 16), method="dora", rank=2)  # type: ignore[arg-type]


def test_bf16_weight_is_decomposed_in_float32() -> None:
    init = init_layer(weight(16, 12).bfloat16(), method="sslora", experts=2, rank=4)
    assert all(t.dtype == torch.float32 for t in init.values())


def test_layer_seed_is_stable_and_name_dependent() -> None:
    name = "language_model.layers.0.self_attn.q_proj"
    assert layer_seed(0, name) == layer_seed(0, name)
    assert layer_seed(0, name) != layer_seed(1, name)
    assert layer_seed(0, name) != layer_seed(0, name.replace("q_proj", "k_proj"))
    # Pinned: a change would silently change every random init of existing bundles.
    assert layer_seed(0, "x") == 0x7FEB36BF5993A69C
    assert 0 <= layer_seed(123, name) < 2**63


@pytest.mark.parametrize("method", ["lora", "pissa", "moelora", "sslora"])
def test_every_method_follows_the_recipe_scale_rule_with_its_own_rank(method: str) -> None:
    w = weight(24, 50)
    d = 8 if method in ("lora", "pissa") else 2  # single-expert methods: d = r
    theory = init_layer(w, method=method, experts=4, rank=8, scaling="theory", eta=1.0)  # type: ignore[arg-type]
    assert float(theory["scale"]) == pytest.approx(math.sqrt(3 * 50 * 1.0 / d))
    const = init_layer(w, method=method, experts=4, rank=8, scaling="constant", alpha=16.0)  # type: ignore[arg-type]
    assert float(const["scale"]) == pytest.approx(16.0 / d)

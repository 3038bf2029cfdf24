"""The routed layer: base equivalence at init, dense form == expert loop, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medqwen_cli.adapters.layer import RoutedLoRALinear
from medqwen_cli.adapters.reference import looped_forward
from medqwen_cli.adapters.spectral import init_layer


def make_layer(
    m: int = 24,
    n: int = 20,
    *,
    method: str = "sslora",
    experts: int = 4,
    top_k: int = 2,
    rank: int = 8,
    rho: float = 10.0,
    router_std: float = 0.02,
    dropout: float = 0.0,
    dropout_masks: str = "shared",
    seed: int = 0,
) -> RoutedLoRALinear:
    torch.manual_seed(seed)
    base = nn.Linear(n, m, bias=True).requires_grad_(False)
    e = 1 if method in ("lora", "pissa") else experts
    init = init_layer(base.weight, method=method, experts=e, rank=rank, rho=rho, seed=seed)  # type: ignore[arg-type]
    return RoutedLoRALinear(
        base, init, experts=e, top_k=min(top_k, e), dropout=dropout, dropout_masks=dropout_masks,
        router_init_std=router_std, router_seed=seed,
    )  # fmt: skip


def assert_same_outputs_and_grads(dense: tuple, loop: tuple) -> None:
    """(output, [grads]) of the dense form and of the expert loop agree; every grad is nonzero."""
    (y_dense, g_dense), (y_loop, g_loop) = dense, loop
    torch.testing.assert_close(y_dense, y_loop, atol=1e-5, rtol=1e-5)
    for gd, gl in zip(g_dense, g_loop, strict=True):
        assert torch.count_nonzero(gd) > 0
        torch.testing.assert_close(gd, gl, atol=1e-6, rtol=1e-4)


def x_of(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(24, 20), (20, 24)])
@pytest.mark.parametrize("experts", [3, 4])
@pytest.mark.parametrize("rho", [1.0, 10.0])
def test_k_equals_e_zero_router_equals_base(
    shape: tuple[int, int], experts: int, rho: float
) -> None:
    layer = make_layer(
        *shape, experts=experts, top_k=experts, rank=2 * experts, rho=rho, router_std=0
    )
    x = x_of(2, 5, shape[1])
    torch.testing.assert_close(layer(x), layer.base_layer(x), atol=1e-5, rtol=1e-5)


def test_residual_is_mean_of_expert_products() -> None:
    layer = make_layer(experts=4, rank=8, rho=2.0)
    d, s = layer.expert_rank, layer.scale
    w_res = sum(
        layer.init_B[:, j * d : (j + 1) * d] @ layer.init_A[j * d : (j + 1) * d] for j in range(4)
    ) * (s / 4)
    x = x_of(6, 20)
    torch.testing.assert_close(layer.residual(x), x @ w_res.T, atol=1e-6, rtol=1e-5)


def test_expectation_over_random_routers_approaches_base() -> None:
    """k < E: by symmetry E[w_i] = 1/E over random routers, so the mean output tends to W0 x."""
    layer = make_layer(experts=4, top_k=2, rank=8, rho=1.0)
    x = x_of(16, 20)
    base = layer.base_layer(x)
    gen = torch.Generator().manual_seed(0)
    deltas = []
    with torch.no_grad():
        for _ in range(256):
            layer.router.weight.copy_(torch.randn(4, 20, generator=gen))
            deltas.append(layer(x) - base)
    deltas_t = torch.stack(deltas)  # (R, N, m)
    size = float(layer.residual(x).norm())  # the term being compensated
    err = {r: float(deltas_t[:r].mean(0).norm()) / size for r in (16, 256)}
    single = float(deltas_t[0].norm()) / size
    assert err[256] < 0.6 * err[16], err
    assert err[256] < 0.15 * single and err[256] < 0.15, (err, single)


@pytest.mark.parametrize("method", ["sslora", "moelora", "lora", "pissa"])
def test_dense_form_matches_expert_loop_in_values_and_gradients(method: str) -> None:
    layer = make_layer(method=method, experts=4, top_k=2, rank=8, router_std=0.5)
    with torch.no_grad():  # trained-looking factors so every gradient is non-trivial
        layer.lora_B.add_(0.1 * torch.randn_like(layer.lora_B))
        layer.lora_A.add_(0.1 * torch.randn_like(layer.lora_A))
    x = x_of(3, 5, 20)
    target = x_of(3, 5, 24, seed=2)
    grads = []
    for forward in (layer.forward, lambda t: looped_forward(layer, t)):
        layer.zero_grad()
        y = forward(x)
        ((y - target) ** 2).mean().backward()
        params = [layer.lora_A, layer.lora_B] + ([layer.router.weight] if layer.router else [])
        grads.append((y.detach(), [p.grad.clone() for p in params]))
    assert_same_outputs_and_grads(*grads)


def test_gradients_reach_only_selected_experts() -> None:
    layer = make_layer(experts=4, top_k=2, rank=8, router_std=1.0)
    x = x_of(1, 20)  # one token: exactly two experts chosen
    layer(x).sum().backward()
    chosen = set(layer.router(x).indices[0].tolist())
    d = layer.expert_rank
    for j in range(4):
        a_grad = layer.lora_A.grad[j * d : (j + 1) * d]
        b_grad = layer.lora_B.grad[:, j * d : (j + 1) * d]
        assert (torch.count_nonzero(a_grad) > 0) == (j in chosen)
        assert (torch.count_nonzero(b_grad) > 0) == (j in chosen)
    assert layer.base_layer.weight.grad is None


def test_router_stats_and_balance_loss_follow_the_token_mask() -> None:
    layer = make_layer(experts=4, top_k=2, rank=8, router_std=1.0)
    x = x_of(2, 6, 20)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :4] = 0
    layer.token_mask = mask
    layer(x)
    assert int(layer.load_counts.sum()) == 8 * 2 and int(layer.routed_tokens) == 8
    assert layer.last_balance_loss is not None and layer.last_balance_loss.requires_grad
    layer.reset_stats()
    assert int(layer.load_counts.sum()) == 0


def test_declared_adapter_state() -> None:
    routed, single = make_layer(method="sslora"), make_layer(method="lora")
    assert set(routed.adapter_tensors("trainable")) == {"lora_A", "lora_B", "router.weight"}
    assert set(routed.adapter_tensors("frozen")) == {"init_A", "init_B", "scale"}
    assert set(single.adapter_tensors("trainable")) == {"lora_A", "lora_B"}
    assert set(single.adapter_tensors("frozen")) == {"scale"}
    assert single.router is None and single.weight is single.base_layer.weight


def test_bf16_base_keeps_adapter_maths_in_float32() -> None:
    layer = make_layer(8, 12, experts=2, top_k=1, rank=4, router_std=0.5)
    layer.base_layer.to(torch.bfloat16)
    x = x_of(2, 3, 12).bfloat16()
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert layer.lora_A.dtype == torch.float32 and layer.last_balance_loss.dtype == torch.float32
    with torch.no_grad():
        xf = x.float()
        g = layer.router(xf).gates.repeat_interleave(layer.expert_rank, -1)
        delta = ((xf @ layer.lora_A.T) * g) @ layer.lora_B.T * layer.scale - layer.residual(xf)
        expected = layer.base_layer(x) + delta.to(torch.bfloat16)
    torch.testing.assert_close(y, expected)
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.router.weight.grad is not None


def test_cpu_autocast_runs_adapter_in_float32() -> None:
    layer = make_layer(8, 12, experts=2, top_k=1, rank=4, router_std=0.5)
    x = x_of(2, 3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16  # what autocast makes of the base product
    assert layer.last_balance_loss.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer(x), atol=0.1, rtol=0.05)


def test_dropout_only_in_training() -> None:
    layer = make_layer(method="sslora", dropout=0.5, rho=1.0)
    x = x_of(4, 20)
    layer.eval()
    torch.testing.assert_close(layer(x), looped_forward(layer, x), atol=1e-5, rtol=1e-5)
    layer.train()
    assert not torch.allclose(layer(x), looped_forward(layer, x), atol=1e-4)


def _expected_with_masks(layer: RoutedLoRALinear, x: torch.Tensor, masks: torch.Tensor):
    """y with expert i's input x * masks[i] (masks: (E, N, n), already scaled by 1/(1-p))."""
    e, d, s = layer.experts, layer.expert_rank, layer.scale
    gates = layer.router(x).gates  # (N, E)
    y = layer.base_layer(x) - layer.residual(x)
    for i in range(e):
        block = slice(i * d, (i + 1) * d)
        yi = ((x * masks[i]) @ layer.lora_A[block].t()) @ layer.lora_B[:, block].t()
        y = y + yi * gates[:, i : i + 1] * s
    return y


def test_per_expert_dropout_draws_one_mask_per_expert() -> None:
    torch.manual_seed(0)
    layer = make_layer(method="sslora", dropout=0.5, dropout_masks="per_expert", rho=1.0)
    x = x_of(6, 20)
    layer.train()
    # the masks the layer draws: nn.Dropout on the expanded (E, N, n) input, same RNG stream
    torch.manual_seed(7)
    masks = torch.nn.functional.dropout(torch.ones(4, 6, 20), 0.5, training=True)
    torch.manual_seed(7)
    got = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(got, _expected_with_masks(layer, x, masks), atol=1e-5, rtol=1e-5)
        assert not torch.equal(masks[0], masks[1])  # the experts' masks differ
        shared = _expected_with_masks(layer, x, masks[:1].expand(4, -1, -1))
        assert not torch.allclose(got, shared, atol=1e-4)  # not one mask for all
    got.sum().backward()
    assert layer.lora_A.grad is not None and layer.router.weight.grad is not None
    layer.eval()  # no dropout at evaluation: same as p = 0
    torch.testing.assert_close(layer(x), looped_forward(layer, x), atol=1e-5, rtol=1e-5)


def test_shared_dropout_uses_one_mask_for_every_expert() -> None:
    layer = make_layer(method="sslora", dropout=0.5, rho=1.0)
    x = x_of(6, 20)
    layer.train()
    torch.manual_seed(7)
    mask = torch.nn.functional.dropout(torch.ones(6, 20), 0.5, training=True)
    torch.manual_seed(7)
    with torch.no_grad():
        torch.testing.assert_close(
            layer(x), _expected_with_masks(layer, x, mask.expand(4, -1, -1)), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(ValueError, match="per_expert"):
        make_layer(dropout_masks="each")


@pytest.mark.parametrize("method", ["sslora", "moelora"])
def test_per_expert_dropout_matches_the_expert_loop_in_values_and_gradients(method: str) -> None:
    layer = make_layer(
        method=method, dropout=0.3, dropout_masks="per_expert", router_std=0.5
    ).train()
    with torch.no_grad():  # trained-looking factors so every gradient is non-trivial
        layer.lora_B.add_(0.1 * torch.randn_like(layer.lora_B))
    x, target = x_of(3, 5, 20), x_of(3, 5, 24, seed=2)
    outs = []
    for loop in (False, True):
        layer.zero_grad()
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(11)  # the same masks: the layer drops its (E, N, n) copies of x
        if loop:
            dropped = nn.functional.dropout(xr.reshape(-1, 20).expand(4, -1, -1), 0.3, True)
            y = looped_forward(layer, xr, dropped)
        else:
            y = layer(xr)
        ((y - target) ** 2).mean().backward()
        grads = [xr.grad, layer.lora_A.grad, layer.lora_B.grad, layer.router.weight.grad]
        outs.append((y.detach(), [g.clone() for g in grads]))
    assert_same_outputs_and_grads(*outs)


def test_per_expert_masks_give_experts_with_equal_a_different_codes() -> None:
    layer = make_layer(method="moelora", top_k=4, dropout=0.5, dropout_masks="per_expert")
    e, d = layer.experts, layer.expert_rank
    with torch.no_grad():  # every expert gets expert 0's A: only the masks can tell them apart
        layer.lora_A.copy_(layer.lora_A[:d].repeat(e, 1))
    x = x_of(6, 20)
    gates = layer.router(x).gates.detach()  # (N, E), all positive with k = E

    def h_per_expert() -> torch.Tensor:  # (N, E, d): x_i A_i^T, codes without gate and scale
        codes, _ = layer._codes(x)  # (N, r)
        return codes.detach().reshape(-1, e, d) / (gates[:, :, None] * layer.scale)

    layer.train()
    h = h_per_expert()
    assert not torch.allclose(h[:, 0], h[:, 1], atol=1e-4)
    layer.eval()  # at evaluation the experts with equal A agree again
    h = h_per_expert()
    torch.testing.assert_close(h[:, 0], h[:, 1])


def test_per_expert_eval_equals_no_dropout() -> None:
    per_expert = make_layer(dropout=0.5, dropout_masks="per_expert").eval()
    plain = make_layer(dropout=0.0)
    x = x_of(2, 5, 20)
    assert torch.equal(per_expert(x), plain(x))

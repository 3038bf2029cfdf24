"""The fused dense form (one GEMM per side for experts and residual, in-place sum) is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medqwen_cli.adapters.layer import RoutedLoRALinear
from medqwen_cli.adapters.reference import looped_forward
from medqwen_cli.adapters.spectral import init_layer


def make_layer(method: str = "sslora", *, dropout: float = 0.0, seed: int = 0) -> RoutedLoRALinear:
    torch.manual_seed(seed)
    base = nn.Linear(20, 24, bias=True).requires_grad_(False)
    e = 1 if method in ("lora", "pissa") else 4
    init = init_layer(base.weight, method=method, experts=e, rank=8, rho=2.0, seed=seed)  # type: ignore[arg-type]
    layer = RoutedLoRALinear(
        base, init, experts=e, top_k=min(2, e), dropout=dropout, router_init_std=0.5
    )
    with torch.no_grad():  # trained-looking factors: every term of the sum matters
        layer.lora_A.add_(0.1 * torch.randn_like(layer.lora_A))
        layer.lora_B.add_(0.1 * torch.randn_like(layer.lora_B))
    return layer


def x_of(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["sslora", "moelora", "lora", "pissa"])
def test_input_gradient_matches_expert_loop(method: str) -> None:
    layer = make_layer(method)
    grads = []
    for forward in (layer.forward, lambda t: looped_forward(layer, t)):
        x = x_of(3, 5, 20).requires_grad_(True)
        (forward(x) * x_of(3, 5, 24, seed=2)).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_router_hooks_see_gates_with_token_dimensions() -> None:
    layer = make_layer()
    seen = []
    handle = layer.router.register_forward_hook(lambda _m, _a, out: seen.append(out.gates.shape))
    layer(x_of(2, 6, 20))
    handle.remove()
    assert seen == [torch.Size([2, 6, 4])]


def test_dropout_reaches_experts_only() -> None:
    layer = make_layer(dropout=0.5).train()
    x = x_of(7, 20)
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    with torch.no_grad():
        dropped = nn.functional.dropout(x, 0.5, training=True)
        g = layer.router(x).gates.repeat_interleave(layer.expert_rank, -1)  # (N, r)
        expected = layer.base_layer(x) - layer.residual(x)
        expected += ((dropped @ layer.lora_A.T) * g) @ layer.lora_B.T * layer.scale
    torch.testing.assert_close(y.detach(), expected, atol=1e-5, rtol=1e-5)


def test_linear_subclass_takes_the_out_of_place_sum() -> None:
    class Tagged(nn.Linear):
        pass

    layer = make_layer()
    x = x_of(4, 20)
    expected = layer(x).detach()
    tagged = Tagged(20, 24)
    tagged.load_state_dict(layer.base_layer.state_dict())
    layer.base_layer = tagged.requires_grad_(False)
    torch.testing.assert_close(layer(x).detach(), expected)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    layer = make_layer()
    x = x_of(2, 5, 20)
    grads = []
    for wrap in (lambda t: layer(t), lambda t: checkpoint(layer, t, use_reentrant=False)):
        layer.zero_grad()
        xr = x.clone().requires_grad_(True)
        (wrap(xr) ** 2).sum().backward()
        grads.append([xr.grad, layer.lora_A.grad.clone(), layer.router.weight.grad.clone()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)

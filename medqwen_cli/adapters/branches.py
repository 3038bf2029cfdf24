"""Branches: experts a later version adds beside a layer's frozen ones (pure torch, no I/O).

A branch of layer W0 (m x n) lives in a subspace of the layer's inputs, given by Q (n x d,
orthonormal columns; d = n: everywhere). Its init is the method's own init of the m x d weight
W0 Q, mapped back by Q^T:

    A = A_Q Q^T,  A0 = A0_Q Q^T     (r x n: every input-side row inside span(Q))

so sslora gets disjoint segments of the SVD of W0 Q Q^T (and its residual from the same
factors), pissa the principal segment, lora and moelora a random A and B = 0; the scale follows
the recipe's rule with the branch's fan-in d. For x orthogonal to span(Q) the branch adds exactly
nothing, whatever its router does. docs/continual.md says how protect chooses Q.

`attach_branch` is the one place a `Branch` is built: for a new branch (from `branch_init`) and
for a stored one (the tensors of a version's adapter, `add_stored_branches`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.adapters.inject import adapter_layers
from medqwen_cli.adapters.layer import Branch, RoutedLoRALinear
from medqwen_cli.adapters.router import DEFAULT_ROUTER_INIT_STD
from medqwen_cli.adapters.spectral import init_layer, layer_seed


def branch_init(
    weight: Tensor, q: Tensor, cfg: AdapterConfig, name: str, index: int
) -> dict[str, Tensor]:
    """Init tensors of branch `index` of layer `name` (weight W0) inside span(`q`) (n x d)."""
    q = q.to(weight.device, torch.float64)
    reduced = (weight.detach().double() @ q).float()  # (m, d)
    init = init_layer(
        reduced, method=cfg.method, experts=cfg.num_experts, rank=cfg.rank, scaling=cfg.scaling,
        alpha=cfg.alpha, eta=cfg.eta, rho=cfg.rho, segments=cfg.segments,
        seed=layer_seed(cfg.seed, f"{name}.branches.{index}"),
    )  # fmt: skip
    qt = q.t().float()  # (d, n)
    for key in ("lora_A", "init_A"):
        if key in init:
            init[key] = init[key] @ qt  # (r, n), rows in span(Q)
    return init


def attach_branch(
    layer: RoutedLoRALinear,
    name: str,
    init: Mapping[str, Tensor],
    cfg: AdapterConfig,
    *,
    router_init_std: float = DEFAULT_ROUTER_INIT_STD,
) -> Branch:
    """Append to `layer` (named `name`) the branch with tensors `init`: the layer's dropout
    and masks, the recipe's experts and top-k, a router seeded by the branch's place."""
    index = len(layer.branches)
    dropout = layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0
    branch = Branch(
        layer.in_features, layer.out_features, init, experts=cfg.num_experts,
        top_k=min(cfg.top_k, cfg.num_experts), dropout=dropout,
        dropout_masks=layer.dropout_masks, router_init_std=router_init_std,
        router_seed=layer_seed(cfg.seed, f"{name}.branches.{index}.router"),
        device=layer.weight.device,
    )  # fmt: skip
    return layer.add_branch(branch)


def add_stored_branches(model: nn.Module, state: dict[str, Tensor], cfg: AdapterConfig) -> int:
    """Give `model`'s layers the branches a version's adapter state holds
    (`<layer>.branches.<i>.<name>`), with those tensors; returns the branches per layer."""
    count = 0
    for name, layer in adapter_layers(model):
        index = len(layer.branches)
        while f"{name}.branches.{index}.lora_A" in state:
            prefix = f"{name}.branches.{index}."
            init = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            attach_branch(layer, name, init, cfg)
            index += 1
        count = max(count, index)
    return count


def freeze_adapters(model: nn.Module) -> None:
    """Every adapter tensor of `model` so far stops training (a new branch then trains alone)."""
    for _, layer in adapter_layers(model):
        for value in layer.adapter_tensors("trainable").values():
            value.requires_grad_(False)


def branch_params(model: nn.Module) -> list[int]:
    """Parameters of each branch index, summed over layers (trainable and frozen tensors)."""
    sizes: dict[int, int] = {}
    for _, layer in adapter_layers(model):
        for i, branch in enumerate(layer.branches):
            total = sum(v.numel() for part in ("trainable", "frozen")
                        for v in branch.own_tensors(part).values())  # fmt: skip
            sizes[i] = sizes.get(i, 0) + total
    return [sizes[i] for i in sorted(sizes)]

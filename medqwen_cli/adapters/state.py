"""Adapter state of an injected model: state dicts, balance loss, router load.

Keys are `<canonical module name>.<tensor name>`, the tensor names being those each
`RoutedLoRALinear` declares:

    trainable (adapter_state_dict)   language_model.layers.0.self_attn.q_proj.lora_A         (r x n)
                                     language_model.layers.0.self_attn.q_proj.lora_B         (m x r)
                                     language_model.layers.0.self_attn.q_proj.router.weight  (E x n)
    frozen init (init_state_dict)    language_model.layers.0.self_attn.q_proj.init_A         (r x n)
                                     language_model.layers.0.self_attn.q_proj.init_B         (m x r)
                                     language_model.layers.0.self_attn.q_proj.scale          ()

Canonical names do not depend on the transformers version, on DDP/compile wrappers, or on the
checkpoint layout, so a state saved from one loads into the other. Adapter layers are found by type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medqwen_cli.adapters.inject import adapter_layers
from medqwen_cli.adapters.naming import layer_kind
from medqwen_cli.errors import AdapterError


def _collect(model: nn.Module, kind: str) -> dict[str, Tensor]:
    return {
        f"{name}.{key}": value
        for name, layer in adapter_layers(model)
        for key, value in layer.adapter_tensors(kind).items()
    }


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Trainable adapter tensors (experts' A, B and routers), detached copies."""
    return {k: v.detach().clone() for k, v in _collect(model, "trainable").items()}


def init_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Frozen init tensors (init_A, init_B where spectral, and scale), detached copies."""
    return {k: v.detach().clone() for k, v in _collect(model, "frozen").items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def load_adapter_state(model: nn.Module, state: dict[str, Tensor], strict: bool = True) -> None:
    """Copy trainable adapter tensors into the model (cast to its dtype and device).

    Raises AdapterError naming the keys that are missing or unexpected (strict only) or whose shape
    differs (always); nothing is copied unless every key fits.
    """
    current = _collect(model, "trainable")
    if not current:
        raise AdapterError("the model has no adapter layers", "call inject_adapters first")
    problems = []
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if strict and missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    wrong = [
        f"{k}: saved {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in current.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        problems.append(f"shape mismatch: {_listed(wrong)}")
    if problems:
        raise AdapterError(
            "adapter state does not fit the model: " + "; ".join(problems),
            "load it into a model injected with the recipe it was trained with",
        )
    with torch.no_grad():
        for key, value in current.items():
            if key in state:
                value.copy_(state[key].to(device=value.device, dtype=value.dtype))


def _expert_sets(model: nn.Module) -> Iterator[Any]:
    """Every set of experts: each adapter layer's own, then its protected branches."""
    for _, layer in adapter_layers(model):
        yield layer
        yield from layer.branches


def balance_loss(model: nn.Module) -> Tensor:
    """Sum over routed layers (and their branches) of the load-balance loss of the latest
    forward (0 if none), as GOAT sums its layers' losses: each router's push does not shrink
    with the layer count. A frozen router's loss is a constant: when some router trains, only
    the training ones count."""
    routed = [s for s in _expert_sets(model) if s.last_balance_loss is not None]
    training = [s for s in routed if s.router is not None and s.router.weight.requires_grad]
    losses = [s.last_balance_loss for s in (training or routed)]
    if not losses:
        return torch.zeros(())
    return torch.stack([loss.to(losses[0].device) for loss in losses]).sum()


def router_load(model: nn.Module) -> dict[str, list[float]]:
    """Share of top-k slots per expert since the last reset, summed over layers of one kind."""
    totals: dict[str, Tensor] = {}
    for name, layer in adapter_layers(model):
        if layer.router is None:
            continue
        counts = layer.load_counts.detach().cpu()
        kind = layer_kind(name)
        totals[kind] = totals[kind] + counts if kind in totals else counts.clone()
    return {kind: (c / c.sum().clamp_min(1)).tolist() for kind, c in totals.items()}


def reset_router_stats(model: nn.Module) -> None:
    for experts in _expert_sets(model):
        experts.reset_stats()

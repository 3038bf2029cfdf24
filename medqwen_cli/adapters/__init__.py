"""Sparse Spectral LoRA: routed LoRA experts initialised from SVD segments (pure torch, no I/O).

config     `AdapterConfig` and the facts of each method (spectral, single-expert, fixed fields)
spectral   SVD segments, expert factors, scales (`init_layer`, one weight at a time)
router     top-k router and load-balance loss
layer      `RoutedLoRALinear`, the dense two-GEMM routed layer
naming     canonical module names across transformers versions and checkpoint layouts
inject     target selection, wrapping, freezing (`inject_adapters`)
branches   experts a later version adds in a subspace of a layer's inputs (`attach_branch`)
state      adapter / init state dicts, balance loss, router load

Names are imported from their module on first use (PEP 562), so `medqwen_cli.adapters.config`
and the recipe that imports it load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medqwen_cli._lazy import lazy_exports

if TYPE_CHECKING:
    from medqwen_cli.adapters.config import (
        AdapterConfig,
    )
    from medqwen_cli.adapters.inject import (
        InjectionReport,
        TargetSelection,
        adapter_layers,
        init_tensors_for,
        inject_adapters,
        linear_shapes,
        select_targets,
    )
    from medqwen_cli.adapters.layer import RoutedLoRALinear
    from medqwen_cli.adapters.naming import (
        canonical_from_checkpoint_key,
        canonical_module_name,
        layer_kind,
    )
    from medqwen_cli.adapters.reference import looped_forward
    from medqwen_cli.adapters.router import (
        DEFAULT_ROUTER_INIT_STD,
        Routing,
        TopKRouter,
        expert_counts,
        load_balance_loss,
    )
    from medqwen_cli.adapters.spectral import (
        init_layer,
        layer_scale,
        layer_seed,
        segment_indices,
        tall_svd,
        theory_scale,
    )
    from medqwen_cli.adapters.state import (
        adapter_state_dict,
        balance_loss,
        init_state_dict,
        load_adapter_state,
        reset_router_stats,
        router_load,
    )

_MODULES = {
    "AdapterConfig": "config",
    "DEFAULT_ROUTER_INIT_STD": "router",
    "InjectionReport": "inject",
    "RoutedLoRALinear": "layer",
    "Routing": "router",
    "TargetSelection": "inject",
    "TopKRouter": "router",
    "adapter_layers": "inject",
    "adapter_state_dict": "state",
    "balance_loss": "state",
    "canonical_from_checkpoint_key": "naming",
    "canonical_module_name": "naming",
    "expert_counts": "router",
    "init_layer": "spectral",
    "init_state_dict": "state",
    "init_tensors_for": "inject",
    "inject_adapters": "inject",
    "layer_kind": "naming",
    "layer_scale": "spectral",
    "layer_seed": "spectral",
    "linear_shapes": "inject",
    "load_adapter_state": "state",
    "load_balance_loss": "router",
    "looped_forward": "reference",
    "reset_router_stats": "state",
    "router_load": "state",
    "segment_indices": "spectral",
    "select_targets": "inject",
    "tall_svd": "spectral",
    "theory_scale": "spectral",
}

__all__ = [
    "AdapterConfig",
    "DEFAULT_ROUTER_INIT_STD",
    "InjectionReport",
    "RoutedLoRALinear",
    "Routing",
    "TargetSelection",
    "TopKRouter",
    "adapter_layers",
    "adapter_state_dict",
    "balance_loss",
    "canonical_from_checkpoint_key",
    "canonical_module_name",
    "expert_counts",
    "init_layer",
    "init_state_dict",
    "init_tensors_for",
    "inject_adapters",
    "layer_kind",
    "layer_scale",
    "layer_seed",
    "linear_shapes",
    "load_adapter_state",
    "load_balance_loss",
    "looped_forward",
    "reset_router_stats",
    "router_load",
    "segment_indices",
    "select_targets",
    "tall_svd",
    "theory_scale",
]


__getattr__ = lazy_exports(__name__, _MODULES)


def __dir__() -> list[str]:
    return sorted(__all__)

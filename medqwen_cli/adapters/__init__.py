"""Sparse Spectral LoRA: routed LoRA experts initialised from SVD segments (pure torch, no I/O).

spectral   SVD segments, expert factors, scales (`init_layer`, one weight at a time)
router     top-k router and load-balance loss
layer      `RoutedLoRALinear`, the dense two-GEMM routed layer
naming     canonical module names across transformers versions and checkpoint layouts
inject     target selection, wrapping, freezing (`inject_adapters`)
state      adapter / init state dicts, balance loss, router load
"""

from medqwen_cli.adapters.inject import (
    InjectionReport,
    TargetSelection,
    adapter_layers,
    init_tensors_for,
    inject_adapters,
    linear_shapes,
    select_targets,
)
from medqwen_cli.adapters.layer import RoutedLoRALinear, looped_forward
from medqwen_cli.adapters.naming import (
    canonical_from_checkpoint_key,
    canonical_module_name,
    layer_kind,
)
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

__all__ = [
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

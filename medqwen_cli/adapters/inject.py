"""Find target layers, wrap them with routed experts, freeze everything else.

Targets are chosen on canonical names (see `naming`): a linear layer is adapted when some
`cfg.targets` regex is found in its name, no `cfg.exclude` regex is, and h = min(m, n) >= r
(smaller layers are skipped and reported). The parameter ratio to a full-rank MoE is

    ratio = E * sum_{adapted} m * n  /  trainable parameters (experts' A, B and routers)

i.e. the parameters E full copies of every adapted weight would train, over what we train.

A forward pre-hook on the top model copies its `attention_mask` (batch, seq) to every adapter
layer, so the balance loss skips padding; a mask whose shape does not match the hidden states at
a layer (vision patches, cached generation) is ignored there and every token counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.adapters.layer import RoutedLoRALinear
from medqwen_cli.adapters.naming import canonical_module_name, layer_kind
from medqwen_cli.adapters.router import DEFAULT_ROUTER_INIT_STD
from medqwen_cli.adapters.spectral import init_layer, layer_seed
from medqwen_cli.errors import AdapterError


@dataclass
class TargetSelection:
    selected: dict[str, tuple[int, int]]  # canonical name -> (m, n)
    skipped: dict[str, str]  # canonical name -> reason


@dataclass
class InjectionReport:
    method: str
    adapted: list[str]
    skipped: dict[str, str]
    trainable_params: int
    total_params: int
    full_moe_params: int  # E * sum of m*n over adapted layers
    ratio_to_full_moe: float  # full_moe_params / trainable_params
    scales: dict[str, float] = field(default_factory=dict)  # layer kind -> s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, RoutedLoRALinear]]:
    """(canonical name, layer) of every adapter layer, found by type."""
    for name, module in model.named_modules():
        if isinstance(module, RoutedLoRALinear):
            yield canonical_module_name(name), module


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Canonical name -> (out, in) of every nn.Linear (works on a meta-device model too)."""
    return {
        canonical_module_name(name): (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }


def select_targets(
    names_and_shapes: Iterable[tuple[str, tuple[int, ...]]] | dict[str, tuple[int, ...]],
    cfg: AdapterConfig,
) -> TargetSelection:
    """Linear layers to adapt (2-D shapes only), on canonical names; raises if none qualifies."""
    items = names_and_shapes.items() if isinstance(names_and_shapes, dict) else names_and_shapes
    shapes = {canonical_module_name(n): tuple(s) for n, s in items if len(tuple(s)) == 2}
    targets = [re.compile(p) for p in cfg.targets]
    excludes = [re.compile(p) for p in cfg.exclude]
    selected: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    for name, (m, n) in shapes.items():
        if not any(p.search(name) for p in targets) or any(p.search(name) for p in excludes):
            continue
        if min(m, n) < cfg.rank:
            skipped[name] = f"min(out, in) = {min(m, n)} < rank {cfg.rank}"
        else:
            selected[name] = (m, n)
    if selected:
        return TargetSelection(selected, skipped)
    if skipped:
        raise AdapterError(
            f"every matched layer is smaller than rank {cfg.rank}: "
            + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5]),
            f"lower adapter.rank to at most {max(min(s) for s in shapes.values())} "
            "(a multiple of adapter.experts), or target larger layers",
        )
    first_of_kind: dict[str, str] = {}  # one example per layer kind: vision and language both show
    for name in shapes:
        first_of_kind.setdefault(layer_kind(name), name)
    examples = ", ".join(list(first_of_kind.values())[:16]) or "none"
    raise AdapterError(
        f"no linear layer matches adapter.targets {cfg.targets} (minus adapter.exclude); "
        f"{len(shapes)} linear layers exist, e.g. {examples}",
        "write target regexes against these canonical names",
    )


def init_tensors_for(
    weight: Tensor, cfg: AdapterConfig, name: str, svd_dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """`spectral.init_layer` with the recipe's settings and the layer's own seed."""
    return init_layer(
        weight, method=cfg.method, experts=cfg.num_experts, rank=cfg.rank, scaling=cfg.scaling,
        alpha=cfg.alpha, eta=cfg.eta, rho=cfg.rho, segments=cfg.segments,
        seed=layer_seed(cfg.seed, canonical_module_name(name)), svd_dtype=svd_dtype,
    )  # fmt: skip


def _layer_init(
    name: str, base: nn.Linear, cfg: AdapterConfig, given: dict[str, Tensor] | None
) -> dict[str, Tensor]:
    if given is None:
        return init_tensors_for(base.weight, cfg, name)
    keys = ("init_A", "init_B", "scale") if cfg.is_spectral else ("scale",)
    missing = [f"{name}.{k}" for k in keys if f"{name}.{k}" not in given]
    if missing:
        raise AdapterError(
            f"init tensors lack {', '.join(missing[:4])}",
            "the init file does not match this recipe's targets/method; rerun init-experts",
        )
    init = {k: given[f"{name}.{k}"] for k in keys}
    m, n, r = base.out_features, base.in_features, cfg.rank
    expected = {"init_A": (r, n), "init_B": (m, r), "lora_A": (r, n), "lora_B": (m, r), "scale": ()}
    for key, shape in expected.items():
        value = given.get(f"{name}.{key}")
        fits = value is None or (value.numel() == 1 if key == "scale" else value.shape == shape)
        if not fits:
            raise AdapterError(
                f"init tensor {name}.{key} has shape {tuple(value.shape)}, expected {shape}",
                "the init file was made for another rank or model; rerun init-experts",
            )
    if f"{name}.lora_A" in given and f"{name}.lora_B" in given:  # explicit trainable start
        init["lora_A"], init["lora_B"] = given[f"{name}.lora_A"], given[f"{name}.lora_B"]
    elif cfg.is_spectral:  # trainable start = frozen factors
        init["lora_A"], init["lora_B"] = init["init_A"], init["init_B"]
    else:  # random start, regenerated from the layer seed (no SVD)
        fresh = init_tensors_for(base.weight, cfg, name)
        init["lora_A"], init["lora_B"] = fresh["lora_A"], fresh["lora_B"]
    return init


def inject_adapters(
    model: nn.Module,
    cfg: AdapterConfig,
    init_tensors: dict[str, Tensor] | None = None,
    *,
    router_init_std: float = DEFAULT_ROUTER_INIT_STD,
) -> InjectionReport:
    """Wrap the target nn.Linear modules of `model` in place and freeze every other parameter.

    `init_tensors` (keyed `<canonical name>.<init_A|init_B|scale>`, as `init_state_dict` writes
    them) gives the exact frozen init; without it each layer's init is computed from its weight.
    """
    if any(True for _ in adapter_layers(model)):
        raise AdapterError("the model already has adapter layers", "inject into a fresh base model")
    modules = {  # the root itself cannot be replaced in place: skip name ""
        canonical_module_name(n): (n, m)
        for n, m in model.named_modules()
        if n and isinstance(m, nn.Linear)
    }
    selection = select_targets({k: tuple(m.weight.shape) for k, (_, m) in modules.items()}, cfg)
    extra = sorted({k.rsplit(".", 1)[0] for k in init_tensors or {}} - set(selection.selected))
    if extra:
        raise AdapterError(
            f"init tensors for layers this recipe does not adapt: {', '.join(extra[:4])}",
            "use the recipe stored with the init file",
        )
    full_moe, scales, layers = 0, {}, []
    for canon, (m, n) in selection.selected.items():
        raw_name, base = modules[canon]
        init = _layer_init(canon, base, cfg, init_tensors)
        layer = RoutedLoRALinear(
            base, init, experts=cfg.num_experts, top_k=cfg.routed_top_k,
            dropout=cfg.dropout, dropout_masks=cfg.dropout_masks, router_init_std=router_init_std,
            router_seed=layer_seed(cfg.seed, canon + ".router"),
        )  # fmt: skip
        parent, _, child = raw_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        layers.append(layer)
        full_moe += cfg.num_experts * m * n
        scales.setdefault(layer_kind(canon), float(layer.scale))
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in layers:
        for value in layer.adapter_tensors("trainable").values():
            value.requires_grad_(True)

    def capture_mask(module: nn.Module, _args: tuple, kwargs: dict) -> None:
        # Walks the module it fires on (not a captured list), so a deep copy of the model
        # sets the mask on its own layers. Also clears last forward's balance losses.
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
        for layer in module.modules():
            if isinstance(layer, RoutedLoRALinear):
                layer.token_mask, layer.last_balance_loss = mask, None

    model.medqwen_mask_hook = model.register_forward_pre_hook(capture_mask, with_kwargs=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return InjectionReport(
        method=cfg.method, adapted=list(selection.selected), skipped=selection.skipped,
        trainable_params=trainable, total_params=sum(p.numel() for p in model.parameters()),
        full_moe_params=full_moe, ratio_to_full_moe=full_moe / max(trainable, 1), scales=scales,
    )  # fmt: skip

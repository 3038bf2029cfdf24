"""Injection into tiny Qwen2-VL / Qwen2.5-VL: base equivalence, freezing, targets, report."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from medqwen_cli.adapters import (
    RoutedLoRALinear,
    adapter_layers,
    adapter_state_dict,
    balance_loss,
    init_state_dict,
    inject_adapters,
    router_load,
    select_targets,
)
from medqwen_cli.errors import AdapterError
from medqwen_cli.recipe import AdapterConfig

ModelFactory = Callable[..., nn.Module]
CfgFactory = Callable[..., AdapterConfig]


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("method", ["sslora", "pissa", "lora", "moelora"])
def test_k_equals_e_zero_router_keeps_base_logits(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict, method: str
) -> None:
    model = make_model()
    base = logits(model, batch)
    cfg = small_cfg(method=method, experts=4, top_k=4, rho=1.0)  # rho=1: largest residual
    report = inject_adapters(model, cfg, router_init_std=0.0)
    assert len(report.adapted) == 14  # 7 linear layers x 2 blocks
    torch.testing.assert_close(logits(model, batch), base, atol=1e-5, rtol=1e-4)


def test_non_power_of_two_experts_keep_base_logits(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    model = make_model()
    base = logits(model, batch)
    inject_adapters(model, small_cfg(experts=3, top_k=3, rank=6), router_init_std=0.0)
    torch.testing.assert_close(logits(model, batch), base, atol=1e-5, rtol=1e-4)


def test_only_adapter_parameters_train_and_vision_is_untouched(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    model = make_model()
    report = inject_adapters(model, small_cfg())
    adapter_params = {
        id(t) for _, layer in adapter_layers(model) for t in layer.adapter_tensors().values()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(id(p) in adapter_params for p in trainable)
    assert len(trainable) == len(adapter_params) == 14 * 3
    assert report.trainable_params == sum(p.numel() for p in trainable)
    assert not any(n.startswith("visual.") or n == "lm_head" for n, _ in adapter_layers(model))
    out = model(**batch).logits
    (out.float().pow(2).mean() + balance_loss(model)).backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (id(param) in adapter_params), name
        if param.grad is not None:
            assert torch.count_nonzero(param.grad) > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if ".visual." in f".{n}")


def test_report_counts_and_ratio(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    model = make_model()
    total_before = sum(p.numel() for p in model.parameters())
    report = inject_adapters(model, small_cfg())
    e, r = 4, 8
    shapes = [(layer.out_features, layer.in_features) for _, layer in adapter_layers(model)]
    assert report.trainable_params == sum(r * n + m * r + e * n for m, n in shapes)
    assert report.full_moe_params == e * sum(m * n for m, n in shapes)
    assert report.ratio_to_full_moe == pytest.approx(
        report.full_moe_params / report.trainable_params
    )
    assert report.total_params == total_before + report.trainable_params
    assert report.skipped == {}
    assert report.scales["language_model.layers.*.mlp.down_proj"] == pytest.approx(
        (3 * 128 * 1.0 / 2) ** 0.5  # theory rule, eta 1 (GOAT), fan-in 128, d = 2
    )


def test_small_layers_are_skipped_with_reason(
    make_model: ModelFactory, small_cfg: CfgFactory
) -> None:
    model = make_model()
    report = inject_adapters(model, small_cfg(rank=40, experts=4))  # k/v are 32 x 64
    assert "language_model.layers.0.self_attn.k_proj" in report.skipped
    assert "32 < rank 40" in report.skipped["language_model.layers.1.self_attn.v_proj"]
    assert "language_model.layers.0.self_attn.q_proj" in report.adapted
    assert len(report.adapted) + len(report.skipped) == 14


def test_rank_larger_than_every_layer(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    with pytest.raises(AdapterError, match="every matched layer is smaller than rank 72"):
        inject_adapters(make_model(), small_cfg(rank=72))


def test_no_target_match_lists_existing_names(
    make_model: ModelFactory, small_cfg: CfgFactory
) -> None:
    with pytest.raises(AdapterError, match="no linear layer matches") as info:
        inject_adapters(make_model(), small_cfg(targets=[r"attention\.query"]))
    assert "language_model.layers.0.self_attn.q_proj" in str(info.value)


def test_config_validation_rejects_bad_shapes() -> None:
    with pytest.raises(ValidationError, match="top_k"):
        AdapterConfig(experts=4, top_k=5, rank=8)
    with pytest.raises(ValidationError, match="divisible"):
        AdapterConfig(experts=4, top_k=2, rank=10)


def test_select_targets_on_checkpoint_names(small_cfg: CfgFactory) -> None:
    names = {
        "model.layers.0.self_attn.q_proj": (64, 64),
        "model.layers.0.mlp.down_proj": (64, 128),
        "model.embed_tokens": (300, 64),
        "visual.blocks.0.mlp.gate_proj": (64, 32),  # Qwen2.5-VL vision MLP: excluded
        "lm_head": (300, 64),
        "visual.patch_embed.proj": (32, 3, 2, 14, 14),  # not 2-D: not a linear layer
    }
    selection = select_targets(names, small_cfg())
    assert set(selection.selected) == {
        "language_model.layers.0.self_attn.q_proj",
        "language_model.layers.0.mlp.down_proj",
    }
    visual = select_targets(names, small_cfg(targets=[r"^visual\..*proj$"], exclude=[]))
    assert set(visual.selected) == {"visual.blocks.0.mlp.gate_proj"}


def test_inject_twice_is_refused(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    model = make_model()
    inject_adapters(model, small_cfg())
    with pytest.raises(AdapterError, match="already"):
        inject_adapters(model, small_cfg())


def test_given_init_tensors_are_used_not_recomputed(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    first = make_model()
    inject_adapters(first, small_cfg())
    init = init_state_dict(first)
    second = make_model()
    with torch.no_grad():  # a changed base: the given factors must win over a fresh SVD
        second.get_submodule("model.language_model.layers.0.self_attn.q_proj").weight.mul_(2)
    inject_adapters(second, small_cfg(), init)
    assert all(torch.equal(v, init_state_dict(second)[k]) for k, v in init.items())
    assert all(
        torch.equal(v, adapter_state_dict(second)[k]) for k, v in adapter_state_dict(first).items()
    )


def test_random_init_regenerates_from_seed(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    cfg = small_cfg(method="moelora")
    first = injected(make_model, cfg)
    init = init_state_dict(first)
    assert all(k.endswith(".scale") for k in init)
    second = make_model()
    inject_adapters(second, cfg, init)
    assert all(
        torch.equal(v, adapter_state_dict(second)[k]) for k, v in adapter_state_dict(first).items()
    )


def injected(make_model: ModelFactory, cfg: AdapterConfig) -> nn.Module:
    model = make_model()
    inject_adapters(model, cfg)
    return model


def test_bad_init_tensors(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    init = init_state_dict(injected(make_model, small_cfg()))
    key = "language_model.layers.1.mlp.up_proj.init_B"
    missing = {k: v for k, v in init.items() if k != key}
    with pytest.raises(AdapterError, match=key.replace(".", r"\.")):
        inject_adapters(make_model(), small_cfg(), missing)
    extra = dict(init, **{"lm_head.init_A": torch.zeros(8, 64)})
    with pytest.raises(AdapterError, match="lm_head"):
        inject_adapters(make_model(), small_cfg(), extra)
    wrong = dict(init, **{key: torch.zeros(128, 4)})
    with pytest.raises(AdapterError, match="shape"):
        inject_adapters(make_model(), small_cfg(), wrong)


def test_padding_does_not_count_in_balance_loss(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    model = make_model()
    inject_adapters(model, small_cfg(), router_init_std=1.0)
    model(**batch)
    first = balance_loss(model)
    layer = next(layer for _, layer in adapter_layers(model))
    assert torch.equal(layer.token_mask, batch["attention_mask"])
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][1, :2] = torch.tensor([7, 8])  # different tokens under the padding
    model(**changed)
    torch.testing.assert_close(balance_loss(model), first, atol=1e-6, rtol=1e-6)
    model(input_ids=changed["input_ids"])  # no mask: every token counts
    assert layer.token_mask is None
    assert not torch.allclose(balance_loss(model), first, atol=1e-6)
    loads = router_load(model)
    assert set(loads) == {"language_model.layers.*.self_attn.q_proj"} | set(loads)
    assert all(sum(v) == pytest.approx(1.0) and len(v) == 4 for v in loads.values())


def test_wrapped_modules_are_routed_layers(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    model = make_model()
    inject_adapters(model, small_cfg())
    q = model.get_submodule("model.language_model.layers.0.self_attn.q_proj")
    assert isinstance(q, RoutedLoRALinear) and isinstance(q.base_layer, nn.Linear)
    assert not q.base_layer.weight.requires_grad


def test_activation_checkpointing_counts_each_token_once(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    grads, counts = [], []
    for checkpointing in (False, True):
        model = make_model()
        inject_adapters(model, small_cfg(), router_init_std=1.0)
        model.train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        out = model(**batch, labels=batch["input_ids"])
        (out.loss + balance_loss(model)).backward()
        layer = next(layer for _, layer in adapter_layers(model))
        counts.append(int(layer.load_counts.sum()))
        grads.append(layer.router.weight.grad.clone())
    assert counts[0] == counts[1] == int(batch["attention_mask"].sum()) * 2
    torch.testing.assert_close(grads[0], grads[1])


def test_balance_loss_sums_the_layers(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    model = make_model()
    inject_adapters(model, small_cfg(), router_init_std=1.0)
    model(**batch)
    per_layer = [layer.last_balance_loss for _, layer in adapter_layers(model)]
    assert len(per_layer) > 1
    torch.testing.assert_close(balance_loss(model), torch.stack(per_layer).sum())
    # a uniform router gives k per layer (GOAT's f_i = slots / tokens, sum_i f_i = k)
    for _, layer in adapter_layers(model):
        torch.nn.init.zeros_(layer.router.weight)
    model(**batch)
    k = next(layer for _, layer in adapter_layers(model)).top_k
    assert float(balance_loss(model).detach()) == pytest.approx(k * len(per_layer), rel=1e-5)


def test_twice_the_layers_gives_twice_the_balance_loss(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    """The sum, not the mean: a second copy of every routed layer doubles the loss."""
    import copy

    model = make_model()
    inject_adapters(model, small_cfg(), router_init_std=1.0)  # far from uniform
    doubled = nn.ModuleList([model, copy.deepcopy(model)])  # 2L routed layers, same routers
    for part in doubled:
        part(**batch)
    single = balance_loss(model)
    uniform = 2 * len(list(adapter_layers(model)))  # k per layer for a uniform router
    assert float(single.detach()) > 1.01 * uniform  # a non-uniform router: not just a count
    torch.testing.assert_close(balance_loss(doubled), 2 * single)


def test_a_stored_scale_is_used_as_stored(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    """Bundles made before every method followed the recipe's rule (lora at alpha / r) keep it."""
    cfg = small_cfg(method="lora")
    first = injected(make_model, cfg)
    init = init_state_dict(first)
    old = cfg.alpha / cfg.rank  # the former lora rule
    assert all(float(v) != pytest.approx(old) for v in init.values())  # the rule did change
    stored = {k: torch.tensor(old) for k in init}
    second = make_model()
    inject_adapters(second, cfg, stored)
    assert all(float(layer.scale) == old for _, layer in adapter_layers(second))
    with torch.no_grad():  # and the forward uses it: B moved, outputs follow s * B A
        for (_, a), (_, b) in zip(adapter_layers(first), adapter_layers(second), strict=True):
            a.lora_B.normal_(0, 0.05)
            b.lora_B.copy_(a.lora_B * (float(a.scale) / old))
    torch.testing.assert_close(logits(second, batch), logits(first, batch), atol=1e-5, rtol=1e-4)

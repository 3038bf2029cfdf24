"""Adapter state dicts: key layout, exact round trip, clear errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from medqwen_cli.adapters import (
    adapter_state_dict,
    init_state_dict,
    inject_adapters,
    load_adapter_state,
)
from medqwen_cli.errors import AdapterError
from medqwen_cli.recipe import AdapterConfig

ModelFactory = Callable[..., nn.Module]
CfgFactory = Callable[..., AdapterConfig]
Q = "language_model.layers.0.self_attn.q_proj"


def trained(make_model: ModelFactory, cfg: AdapterConfig) -> nn.Module:
    """An injected model whose adapter tensors moved away from their init."""
    model = make_model()
    inject_adapters(model, cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model


@pytest.mark.parametrize("method", ["sslora", "lora"])
def test_key_layout(make_model: ModelFactory, small_cfg: CfgFactory, method: str) -> None:
    model = make_model()
    inject_adapters(model, small_cfg(method=method))
    state, init = adapter_state_dict(model), init_state_dict(model)
    routed = method == "sslora"
    assert set(k for k in state if k.startswith(Q + ".")) == {
        f"{Q}.lora_A",
        f"{Q}.lora_B",
        *([f"{Q}.router.weight"] if routed else []),
    }
    assert set(k for k in init if k.startswith(Q + ".")) == (
        {f"{Q}.init_A", f"{Q}.init_B", f"{Q}.scale"} if routed else {f"{Q}.scale"}
    )
    r, e = 8, 4 if routed else 1
    assert state[f"{Q}.lora_A"].shape == (r, 64) and state[f"{Q}.lora_B"].shape == (64, r)
    if routed:
        assert state[f"{Q}.router.weight"].shape == (e, 64)
    assert init[f"{Q}.scale"].shape == ()
    assert all(k.startswith("language_model.layers.") for k in state)
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in state.values())


def test_round_trip_reproduces_outputs_exactly(
    make_model: ModelFactory, small_cfg: CfgFactory, batch: dict
) -> None:
    source = trained(make_model, small_cfg())
    with torch.no_grad():
        expected = source(**batch).logits
    target = make_model()
    inject_adapters(target, small_cfg(), init_state_dict(source))
    load_adapter_state(target, adapter_state_dict(source))
    with torch.no_grad():
        assert torch.equal(target(**batch).logits, expected)


def test_keys_do_not_depend_on_wrappers(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    model = trained(make_model, small_cfg())
    ddp_like = nn.ModuleDict({"module": model})  # names become module.model.language_model...
    assert adapter_state_dict(ddp_like).keys() == adapter_state_dict(model).keys()


def test_state_dict_is_a_copy(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    model = trained(make_model, small_cfg())
    state = adapter_state_dict(model)
    state[f"{Q}.lora_A"].zero_()
    assert torch.count_nonzero(adapter_state_dict(model)[f"{Q}.lora_A"]) > 0


def test_load_errors_name_the_keys(make_model: ModelFactory, small_cfg: CfgFactory) -> None:
    state = adapter_state_dict(trained(make_model, small_cfg()))
    model = make_model()
    inject_adapters(model, small_cfg())
    before = adapter_state_dict(model)

    missing = {k: v for k, v in state.items() if k != f"{Q}.router.weight"}
    with pytest.raises(AdapterError, match=r"missing keys: .*q_proj\.router\.weight"):
        load_adapter_state(model, missing)
    extra = dict(state, **{f"{Q}.lora_C": torch.zeros(1)})
    with pytest.raises(AdapterError, match=r"unexpected keys: .*q_proj\.lora_C"):
        load_adapter_state(model, extra)
    wrong = dict(state, **{f"{Q}.lora_A": torch.zeros(16, 64)})
    with pytest.raises(AdapterError, match=r"shape mismatch: .*q_proj\.lora_A: saved \(16, 64\)"):
        load_adapter_state(model, wrong)
    with pytest.raises(AdapterError, match="shape mismatch"):
        load_adapter_state(model, wrong, strict=False)
    # Nothing was copied by the failed loads.
    assert all(torch.equal(v, adapter_state_dict(model)[k]) for k, v in before.items())
    load_adapter_state(model, missing, strict=False)  # partial load when asked for
    assert torch.equal(adapter_state_dict(model)[f"{Q}.lora_A"], state[f"{Q}.lora_A"])
    with pytest.raises(AdapterError, match="no adapter layers"):
        load_adapter_state(make_model(), state)

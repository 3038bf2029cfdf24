"""merge/remote.py, the modeling file copied into routed exports: its layer and its names agree
with medqwen's own (it cannot import medqwen, so it keeps copies)."""

from __future__ import annotations

import torch


def test_remote_layer_matches_medqwen_layer_bit_for_bit() -> None:
    """merge.remote.RoutedLinear repeats RoutedLoRALinear's op order (change them together)."""
    from torch import nn

    from medqwen_cli.adapters import RoutedLoRALinear, init_layer
    from medqwen_cli.merge.remote import RoutedLinear

    torch.manual_seed(0)
    for method, experts, top_k in (("sslora", 4, 2), ("moelora", 4, 1), ("lora", 1, 1)):
        base = nn.Linear(48, 40)
        init = init_layer(base.weight, method=method, experts=experts, rank=8, seed=3)
        ours = RoutedLoRALinear(base, init, experts=experts, top_k=top_k).eval()
        with torch.no_grad():
            ours.lora_B.add_(torch.randn_like(ours.lora_B) * 0.1)
            if ours.router is not None:
                ours.router.weight.normal_()
        remote = RoutedLinear(
            48, 40, True, experts=experts, top_k=top_k, rank=8, spectral=method == "sslora"
        )
        state = {"weight": base.weight, "bias": base.bias}
        for kind in ("trainable", "frozen"):
            state.update(ours.adapter_tensors(kind))
        remote.load_state_dict(state, strict=True)
        x = torch.randn(2, 7, 48)
        with torch.no_grad():
            assert torch.equal(remote(x), ours(x)), method


def test_remote_names_agree_with_medqwen_naming() -> None:
    """The modeling file keeps its own copy of the canonical names (it cannot import medqwen)."""
    from medqwen_cli.adapters.naming import canonical_module_name
    from medqwen_cli.merge.remote import canonical_module_name as remote_name

    names = [
        "model.language_model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj",
        "model.visual.blocks.0.attn.qkv", "visual.merger.mlp.0", "lm_head",
        "module._orig_mod.model.language_model.layers.3.mlp.down_proj",
    ]  # fmt: skip
    assert [remote_name(n) for n in names] == [canonical_module_name(n) for n in names]

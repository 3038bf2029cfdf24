"""mean_gates: the mean routing weights over the real (non-padding) tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from medqwen_cli.adapters import adapter_layers
from medqwen_cli.merge import mean_gates


def test_mean_gates_average_real_tokens_only(trained: Path, reference, records, batch_of) -> None:
    """Recomputed from each router's input: softmax, top-k, renormalise, average over the
    tokens the attention mask keeps (the batch is padded: lengths differ)."""
    ref = reference(trained)
    batch = batch_of(ref.processor, records(n=3))
    assert (batch["attention_mask"] == 0).any()
    inputs = {}
    layers = dict(adapter_layers(ref.model))

    def keep_input(name: str):
        def hook(_module, args, _out) -> None:
            inputs[name] = args[0].detach()

        return hook

    hooks = [layer.router.register_forward_hook(keep_input(n)) for n, layer in layers.items()]
    gates = mean_gates(ref.model, [batch])
    for hook in hooks:
        hook.remove()
    keep = batch["attention_mask"].bool()
    for name, layer in layers.items():
        probs = (inputs[name] @ layer.router.weight.t()).softmax(-1)[keep]  # (T, E)
        top = probs.topk(layer.top_k, dim=-1)
        w = torch.zeros_like(probs).scatter(-1, top.indices, top.values / top.values.sum(-1, True))
        assert torch.allclose(gates[name], w.double().mean(0), atol=1e-6), name

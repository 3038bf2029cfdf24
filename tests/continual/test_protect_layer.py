"""Protected branches at the layer: the guarantee (outputs on span(M) never move), for every
method, through AdamW training with weight decay; the bases' energy rule; the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medqwen_cli.adapters import AdapterConfig, inject_adapters
from medqwen_cli.adapters.branches import add_stored_branches
from medqwen_cli.adapters.state import adapter_state_dict, load_adapter_state
from medqwen_cli.continual.protect import add_protected_branches
from medqwen_cli.continual.subspace import complement, energy_in, grow_basis, input_grams
from medqwen_cli.errors import TrainingError

N, M_OUT, K = 32, 40, 10  # input dim, output dim, basis size


def _reproject(model: nn.Module) -> None:
    """What protect does after every optimizer step (`ProtectStrategy.after_step`)."""
    from medqwen_cli.continual.protect import ProtectStrategy

    ProtectStrategy(
        energy=1.0, records=1, earlier=[], stored_from=None, stored_tasks=[]
    ).after_step(model)


class TwoLayers(nn.Module):
    """q and k read the same input (a group), o reads q's output."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(N, N)
        self.k_proj = nn.Linear(N, N)
        self.o_proj = nn.Linear(N, M_OUT)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.o_proj(torch.tanh(self.q_proj(x))) + self.k_proj(x).sum(-1, keepdim=True)


def model_for(method: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TwoLayers()
    cfg = AdapterConfig(
        method=method, experts=4, top_k=2, rank=8, targets=[r"(q|k|o)_proj$"], exclude=[]
    )
    inject_adapters(model, cfg)
    return model, cfg


def orthonormal(k: int, seed: int = 5) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(N, k, generator=torch.Generator().manual_seed(seed)))
    return q  # (N, k)


@pytest.mark.parametrize("method", ["sslora", "moelora", "lora", "pissa"])
def test_outputs_on_the_protected_span_never_move(method: str) -> None:
    model, cfg = model_for(method)
    basis = orthonormal(K)
    # o_proj's input is q's output: it gets a basis of its own (here: all of span(tanh(q x)) is
    # not known, so give it the same kind of random basis and check it separately)
    bases = {"q_proj": basis.double(), "o_proj": orthonormal(K, seed=6).double()}
    groups = {"q_proj": "q_proj", "k_proj": "q_proj", "o_proj": "o_proj"}
    old = torch.randn(64, K, generator=torch.Generator().manual_seed(1)) @ basis.t()  # in span
    layers = dict(model.named_modules())
    before = {n: layers[n](old).detach() for n in ("q_proj", "k_proj")}
    o_in = (
        torch.randn(64, K, generator=torch.Generator().manual_seed(2)) @ bases["o_proj"].float().t()
    )
    before["o_proj"] = layers["o_proj"](o_in).detach()
    frozen = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    branches = add_protected_branches(model, bases, groups, cfg)
    assert len(branches) == 3
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(
        any(p is q for b in branches for q in b.parameters()) for p in trainable
    )
    optimizer = torch.optim.AdamW(trainable, lr=0.05, weight_decay=0.1)
    new = torch.randn(64, N, generator=torch.Generator().manual_seed(3))  # anywhere
    target = torch.randn(64, M_OUT, generator=torch.Generator().manual_seed(4))
    for _ in range(30):
        loss = (model(new) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        _reproject(model)
        optimizer.zero_grad()
    moved = [float(b.lora_B.detach().abs().max()) for b in branches]
    assert max(moved) > 1e-3, "the branches did not learn"
    for name in ("q_proj", "k_proj"):
        torch.testing.assert_close(layers[name](old), before[name], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(layers["o_proj"](o_in), before["o_proj"], atol=2e-5, rtol=1e-5)
    # and elsewhere the layer did change; the old tensors did not
    assert not torch.allclose(layers["q_proj"](new), layers["q_proj"].base_layer(new), atol=1e-4)
    state = adapter_state_dict(model)
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    # a version's state rebuilds the same model: branches from the saved tensors
    again, _ = model_for(method)
    add_stored_branches(again, state, cfg)
    load_adapter_state(again, state)
    torch.testing.assert_close(again(new), model(new), atol=1e-6, rtol=1e-6)


def test_without_reprojection_adamw_leaves_the_complement() -> None:
    """Why protect reprojects after every step: projected gradients alone drift."""
    model, cfg = model_for("lora")
    basis = orthonormal(K).double()
    (branch, *_rest) = add_protected_branches(
        model, {"q_proj": basis, "o_proj": basis}, {"k_proj": "q_proj"}, cfg
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x = torch.randn(16, N)
    for _ in range(5):
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    leak = float((branch.lora_A @ basis.float()).norm() / branch.lora_A.norm())
    assert leak > 1e-3  # weight decay and Adam's scaling moved A into span(M)
    _reproject(model)
    assert float((branch.lora_A @ basis.float()).norm()) < 1e-5


def test_basis_keeps_the_asked_energy_and_grows_over_tasks() -> None:
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -3, N, dtype=torch.float64)
    x = torch.randn(500, N, generator=g, dtype=torch.float64) * scales  # decaying spectrum
    gram = x.t() @ x
    basis = grow_basis(None, gram, 0.9)
    assert energy_in(basis, gram) >= 0.9
    smaller = basis[:, :-1]
    assert energy_in(smaller, gram) < 0.9  # the fewest directions
    torch.testing.assert_close(basis.t() @ basis, torch.eye(basis.shape[1], dtype=torch.float64))
    assert grow_basis(basis, gram, 0.9).shape == basis.shape  # already enough: unchanged
    y = torch.randn(500, N, generator=g, dtype=torch.float64) * scales.flip(0)  # another task
    grown = grow_basis(basis, y.t() @ y, 0.9)
    assert grown.shape[1] > basis.shape[1] and energy_in(grown, y.t() @ y) >= 0.9
    torch.testing.assert_close(grown[:, : basis.shape[1]].abs(), basis.abs(), atol=1e-8, rtol=0)
    q = complement(grown)
    assert q.shape == (N, N - grown.shape[1])
    assert float((q.t() @ grown).abs().max()) < 1e-10


def test_layers_reading_one_tensor_share_a_basis() -> None:
    model, _ = model_for("sslora")
    x = torch.randn(3, 7, N)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0  # padding is left out
    batches = [{"x": x[:2], "attention_mask": mask[:2]}, {"x": x[2:], "attention_mask": mask[2:]}]
    grams, groups, tokens = input_grams(model, lambda: batches, "cpu")
    assert groups == {"q_proj": "q_proj", "k_proj": "q_proj", "o_proj": "o_proj"}
    assert set(grams) == {"q_proj", "o_proj"} and tokens == 19
    kept = x[mask.bool()].double()
    torch.testing.assert_close(grams["q_proj"], kept.t() @ kept)
    # a budget of one group at a time: one pass per group, the same sums
    passes = []
    again, _, tokens_again = input_grams(
        model, lambda: passes.append(1) or batches, "cpu", budget=N * N * 8
    )
    assert len(passes) == 1 + 2 and tokens_again == 19  # the groups' pass, then one per group
    assert all(torch.equal(again[g], grams[g]) for g in grams)


def test_a_layer_the_bases_fill_is_refused_by_name() -> None:
    model, cfg = model_for("lora")
    full = orthonormal(N - 4).double()  # 4 directions left, rank 8 needed
    with pytest.raises(
        TrainingError, match=r"layer q_proj: .* fills 28 of its 32 input directions \(88%\)"
    ):
        add_protected_branches(model, {"q_proj": full}, {"k_proj": "q_proj"}, cfg)


@pytest.mark.parametrize("method", ["sslora", "lora"])
def test_frozen_sets_folded_compute_the_same(method: str) -> None:
    """Three branches on a layer: its own experts and the first two branches are frozen. Their
    linear parts folded into the base weight (`fold_into_base`), their input projections in one
    GEMM, or neither: outputs, dx and the live branch's gradient agree."""
    from medqwen_cli.adapters.layer import RoutedLoRALinear

    def three_branches() -> RoutedLoRALinear:
        model, cfg = model_for(method)
        for seed in (7, 8, 9):
            add_protected_branches(model, {"q_proj": orthonormal(4, seed).double()}, {}, cfg)
        layer = dict(model.named_modules())["q_proj"]
        for p in layer.branches[-1].parameters():
            p.data.add_(0.01)  # B = 0 at init: give every set a visible share
        for branch in layer.branches[:-1]:
            branch.lora_B.data.add_(0.01)
        return layer

    layer, in_base = three_branches(), three_branches()
    assert [b.foldable() for b in layer.branches] == [True, True, False] and layer.foldable()
    assert in_base.fold_into_base() == 3  # own experts and two branches: each has a linear part
    assert not torch.equal(in_base.base_layer.weight, layer.base_layer.weight)
    x = torch.randn(2, 5, N, generator=torch.Generator().manual_seed(3), requires_grad=True)
    results = []
    for module, fold in ((in_base, True), (layer, True), (layer, False)):
        RoutedLoRALinear.fold_frozen = fold
        try:
            x.grad = None
            module.zero_grad(set_to_none=True)
            y = module(x)
            y.pow(2).sum().backward()
            live = module.branches[-1].lora_A.grad.clone()
            results.append((y.detach(), x.grad.clone(), live))
        finally:
            RoutedLoRALinear.fold_frozen = True
    for other in results[1:]:
        for got, want in zip(results[0], other, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

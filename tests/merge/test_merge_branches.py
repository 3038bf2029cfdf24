"""merge on versions with protected branches (`continue --protect`): routed carries and rebuilds
every branch (exact, through both loaders); dense and peft fold every branch like the layer's
own experts, each set with its own mean gates (exact for lora and for uniform routing); a lora
version's peft export is one LoRA of rank r (1 + branches).

The bundles stand in for protected versions: each branch is added the way `continue --protect`
adds it (`add_protected_branches`, random orthonormal bases), then perturbed as a trained one
would be (lora's B starts at 0). Versions: v0002 = own experts perturbed + branch 0, v0003 =
v0002 + branch 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medqwen_cli.bundle import Bundle
from medqwen_cli.merge import MANIFEST_FILE, REPORT_FILE, merge_bundle

PIXELS = 12544  # train.max_image_pixels of the tiny recipe
BRANCHES = 2
LAYERS = 14  # adapted layers of tiny-qwen2-vl


def _protected_bundle(root: Path, recipe: Path, overrides: list[str], *, uniform: bool) -> Path:
    """A bundle whose head (v0003) has BRANCHES protected branches per layer. `uniform`: zero
    routers everywhere (with top_k = E every gate is 1/E: the mean-gate fold is exact)."""
    from medqwen_cli.adapters import adapter_layers
    from medqwen_cli.adapters.state import adapter_state_dict
    from medqwen_cli.continual.protect import add_protected_branches
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.loading import adapter_config, load_adapted
    from medqwen_cli.recipe import load_recipe

    init_experts(load_recipe(recipe, ["eval.max_samples=2", *overrides]), root)
    bundle = Bundle.open(root)
    cfg = adapter_config(bundle)
    gen = torch.Generator().manual_seed(1)

    def perturb(experts: nn.Module) -> None:
        with torch.no_grad():
            experts.lora_B.add_(0.05 * torch.randn(experts.lora_B.shape, generator=gen))
            if experts.router is not None:
                noise = 0.5 * torch.randn(experts.router.weight.shape, generator=gen)
                experts.router.weight.copy_(torch.zeros_like(noise) if uniform else noise)

    for index in range(BRANCHES):
        model = load_adapted(bundle, dtype="float32", device="cpu", max_pixels=PIXELS).model
        layers = dict(adapter_layers(model))
        if index == 0:
            for layer in layers.values():
                perturb(layer)
        bases = {}
        for name, layer in layers.items():
            q, _ = torch.linalg.qr(torch.randn(layer.in_features, 8, generator=gen))  # (n, 8)
            bases[name] = q.double()
        for branch in add_protected_branches(model, bases, {}, cfg):
            perturb(branch)
        bundle.append_version(
            adapter_state_dict(model), command=f"test: branch {index}", tasks=["xray"],
            recipe=bundle.manifest.recipe,
        )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def sslora_branches(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path) -> Path:
    root = tmp_path_factory.mktemp("branches") / "sslora"
    return _protected_bundle(root, tiny_recipe, [], uniform=False)


@pytest.fixture(scope="module")
def sslora_uniform_branches(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path) -> Path:
    root = tmp_path_factory.mktemp("branches") / "uniform"
    return _protected_bundle(root, tiny_recipe, ["adapter.top_k=4"], uniform=True)


@pytest.fixture(scope="module")
def lora_branches(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path) -> Path:
    root = tmp_path_factory.mktemp("branches") / "lora"
    return _protected_bundle(root, tiny_recipe, ["adapter.method=lora"], uniform=False)


def _layer_with_branches(method: str, seed: int = 0):
    """A RoutedLoRALinear (48 -> 40, rank 8) with BRANCHES branches, every tensor perturbed."""
    from medqwen_cli.adapters import RoutedLoRALinear, init_layer
    from medqwen_cli.adapters.layer import Branch

    torch.manual_seed(seed)
    experts = 1 if method in ("lora", "pissa") else 4
    top_k = min(2, experts)
    base = nn.Linear(48, 40)
    init = init_layer(base.weight, method=method, experts=experts, rank=8, seed=3)
    layer = RoutedLoRALinear(base, init, experts=experts, top_k=top_k).eval()
    for j in range(BRANCHES):
        other = init_layer(base.weight, method=method, experts=experts, rank=8, seed=10 + j)
        layer.add_branch(Branch(48, 40, other, experts=experts, top_k=top_k, router_seed=j))
    with torch.no_grad():
        for experts_set in (layer, *layer.branches):
            experts_set.lora_B.add_(torch.randn_like(experts_set.lora_B) * 0.1)
            if experts_set.router is not None:
                experts_set.router.weight.normal_()
    return layer.eval()


@pytest.mark.parametrize("method", ["sslora", "moelora", "lora", "pissa"])
def test_remote_layer_with_branches_matches_medqwen_bit_for_bit(method: str) -> None:
    """merge.remote.RoutedLinear repeats the op order of RoutedLoRALinear with branches too."""
    from medqwen_cli.merge.remote import RoutedLinear

    ours = _layer_with_branches(method)
    remote = RoutedLinear(
        48, 40, True, experts=ours.experts, top_k=ours.top_k, rank=8,
        spectral=ours.init_A is not None, branches=BRANCHES,
    )  # fmt: skip
    state = {"weight": ours.base_layer.weight, "bias": ours.base_layer.bias}
    for kind in ("trainable", "frozen"):
        state.update(ours.adapter_tensors(kind))
    assert any(k.startswith("branches.1.") for k in state)
    remote.load_state_dict(state, strict=True)
    x = torch.randn(2, 7, 48)
    with torch.no_grad():
        assert torch.equal(remote(x), ours(x))


@pytest.mark.parametrize("method", ["sslora", "lora", "pissa"])
def test_update_factors_fold_every_branch(method: str) -> None:
    """P Q = sum over the layer's own experts and each branch of s wbar B A - (s/E) B0 A0; for
    single-expert methods that is the layer's adapter term exactly."""
    from medqwen_cli.merge import update_factors

    layer = _layer_with_branches(method)
    e = layer.experts
    gen = torch.Generator().manual_seed(0)
    gates = [torch.rand(e, generator=gen, dtype=torch.float64) for _ in range(1 + BRANCHES)]
    if e == 1:
        gates = [torch.ones(1, dtype=torch.float64)] * (1 + BRANCHES)
    p, q = update_factors(layer, gates[0], gates[1:])
    expected = torch.zeros(40, 48, dtype=torch.float64)
    for experts, wbar in zip((layer, *layer.branches), gates, strict=True):
        s, d = float(experts.scale), experts.expert_rank
        for i in range(e):
            block = slice(i * d, (i + 1) * d)
            b, a = experts.lora_B[:, block].double(), experts.lora_A[block].double()
            expected += s * float(wbar[i]) * b @ a
            if experts.init_A is not None:
                b0, a0 = experts.init_B[:, block].double(), experts.init_A[block].double()
                expected -= s / e * b0 @ a0
    assert p.shape[1] == (2 if layer.init_A is not None else 1) * 8 * (1 + BRANCHES)
    assert torch.allclose(p @ q, expected, atol=1e-10)
    if e == 1:  # the fold is the layer itself
        x = torch.randn(5, 48)
        with torch.no_grad():
            folded = layer.base_layer(x) + (x.double() @ (p @ q).t()).float()
            torch.testing.assert_close(folded, layer(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="branch"):
        update_factors(layer, gates[0], gates[1:2])


def test_routed_export_with_branches_equals_the_bundle_through_both_loaders(
    sslora_branches: Path, tmp_path: Path, reference, logits, routed_exact
) -> None:
    from medqwen_cli.adapters import adapter_layers

    out = tmp_path / "routed"
    result = merge_bundle(sslora_branches, out)
    assert (result.mode, result.exact, result.version) == ("routed", True, "v0003")
    config = json.loads((out / "config.json").read_text())
    assert len(config["medqwen_routed"]["branches"]) == LAYERS
    assert set(config["medqwen_routed"]["branches"].values()) == {BRANCHES}
    assert json.loads((out / MANIFEST_FILE).read_text())["format"] == 2  # older medqwen refuses

    merged, remote, batch, expected = routed_exact(sslora_branches, "v0003", out)
    parent = logits(reference(sslora_branches, "v0002").model, batch)
    assert not torch.allclose(parent, expected, atol=1e-3)  # the last branch matters
    assert all(len(layer.branches) == BRANCHES for _, layer in adapter_layers(merged))
    layer = remote.model.language_model.layers[0].mlp.up_proj
    assert len(layer.branches) == BRANCHES and layer.branches[1].router is not None


def test_routed_export_without_branches_keeps_format_1(trained: Path, tmp_path: Path) -> None:
    """A medqwen from before branches still reads every export that has none."""
    out = tmp_path / "routed"
    merge_bundle(trained, out)
    assert json.loads((out / MANIFEST_FILE).read_text())["format"] == 1
    assert json.loads((out / "config.json").read_text())["medqwen_routed"]["branches"] == {}


def test_mean_gates_of_branches_average_their_own_routers(
    sslora_branches: Path, reference, records, batch_of
) -> None:
    from medqwen_cli.adapters import adapter_layers
    from medqwen_cli.merge import mean_gates

    ref = reference(sslora_branches, "v0003")
    batch = batch_of(ref.processor, records(n=3))
    inputs = {}
    hooks = []
    for name, layer in adapter_layers(ref.model):
        for j, branch in enumerate(layer.branches):

            def keep(_m, args, _out, key=f"{name}.branches.{j}") -> None:
                inputs[key] = args[0].detach()

            hooks.append(branch.router.register_forward_hook(keep))
    gates = mean_gates(ref.model, [batch])
    for hook in hooks:
        hook.remove()
    assert len(gates) == LAYERS * (1 + BRANCHES)
    mask = batch["attention_mask"].bool()
    layers = dict(adapter_layers(ref.model))
    for key, x in inputs.items():
        name, _, j = key.rpartition(".branches.")
        router = layers[name].branches[int(j)].router
        probs = (x @ router.weight.t()).softmax(-1)[mask]  # (T, E)
        top = probs.topk(router.top_k, dim=-1)
        w = torch.zeros_like(probs).scatter(-1, top.indices, top.values / top.values.sum(-1, True))
        assert torch.allclose(gates[key], w.double().mean(0), atol=1e-6), key
        assert not torch.allclose(gates[key], gates[name])  # each set its own gates


def test_dense_folds_every_lora_branch_exactly(lora_branches: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "dense"
    result = merge_bundle(lora_branches, out, mode="dense", calibration_samples=5, evaluate=False)
    fid = result.fidelity
    assert fid.tokens > 0 and fid.mean_relative_logit_error < 1e-5 and fid.top1_agreement == 1.0
    gates = json.loads((out / REPORT_FILE).read_text())["mean_gates"]
    assert len(gates) == LAYERS * (1 + BRANCHES) and all(g == [1.0] for g in gates.values())
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == 1  # a plain transformers model: any medqwen reads it
    # the folded weight, recomputed from the bundle: W0 + s B A + sum_j s_j B_j A_j
    bundle = Bundle.open(lora_branches)
    init, adapter = bundle.read_init(), bundle.read_adapter("v0003")
    base = load_file(Path(manifest["base"]["path"]) / "model.safetensors")
    name, key = "language_model.layers.1.mlp.down_proj", "model.layers.1.mlp.down_proj.weight"
    expected = base[key].double() + init[f"{name}.scale"].double() * (
        adapter[f"{name}.lora_B"].double() @ adapter[f"{name}.lora_A"].double()
    )
    for j in range(BRANCHES):
        prefix = f"{name}.branches.{j}."
        update = adapter[prefix + "lora_B"].double() @ adapter[prefix + "lora_A"].double()
        assert update.abs().max() > 1e-4  # the branch changes the weight
        expected += adapter[prefix + "scale"].double() * update
    merged = load_file(out / "model.safetensors")
    assert torch.allclose(merged[key].double(), expected, atol=1e-6)
    # the base's own tensors and shapes, whatever the branches: inference costs what the base does
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in base.items()}


def test_peft_lora_branches_are_one_higher_rank_lora(
    lora_branches: Path, tmp_path: Path, reference, records, batch_of, logits
) -> None:
    peft = pytest.importorskip("peft", reason="peft is not installed (pip install peft)")
    from transformers import Qwen2VLForConditionalGeneration

    out = tmp_path / "peft"
    result = merge_bundle(lora_branches, out, mode="peft", calibration_samples=5, evaluate=False)
    rank = 16 * (1 + BRANCHES)  # r = 16 per set of experts, no residual
    config = json.loads((out / "adapter_config.json").read_text())
    assert result.peft_rank == rank and config["r"] == rank and config["lora_alpha"] == rank
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    for key, a in weights.items():  # every layer keeps all its r (1 + branches) directions,
        if key.endswith("lora_A.weight"):  # or all there are: k and v map 64 -> 32 here
            b = weights[key.replace("lora_A", "lora_B")]  # (m, k), a: (k, n)
            assert a.shape[0] == min(rank, b.shape[0], a.shape[1]), key
    report = json.loads((out / REPORT_FILE).read_text())
    assert max(report["peft"]["dropped_energy"].values()) < 1e-12
    fid = result.fidelity
    assert "PeftModel" in fid.measured_with
    assert fid.mean_relative_logit_error < 1e-5 and fid.top1_agreement == 1.0
    # loaded independently, as a user would
    ref = reference(lora_branches, "v0003")
    batch = batch_of(ref.processor, records(n=2))
    base = Qwen2VLForConditionalGeneration.from_pretrained(
        config["base_model_name_or_path"], dtype=torch.float32
    )
    model = peft.PeftModel.from_pretrained(base, out).eval()
    expected = logits(ref.model, batch)
    without_branches = logits(reference(lora_branches, "v0001").model, batch)
    assert not torch.allclose(without_branches, expected, atol=1e-3)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["dense", "peft"])
def test_routed_branches_fold_with_their_own_mean_gates(
    sslora_uniform_branches: Path, tmp_path: Path, mode: str
) -> None:
    """sslora with branches: every set of experts folded with its mean gates and residual; with
    uniform routing (zero routers, k = E) that is the routed model itself."""
    out = tmp_path / mode
    result = merge_bundle(
        sslora_uniform_branches, out, mode=mode, calibration_samples=5, evaluate=False
    )
    fid = result.fidelity
    assert fid.mean_relative_logit_error < 1e-5 and fid.top1_agreement == 1.0
    report = json.loads((out / REPORT_FILE).read_text())
    gates = report["mean_gates"]
    assert len(gates) == LAYERS * (1 + BRANCHES)
    assert all(g == [0.25] * 4 for g in gates.values())
    if mode == "peft":
        assert max(report["peft"]["dropped_energy"].values()) < 1e-12


def test_a_version_of_continue_protect_exports_exactly(
    bundle_dir: Path, tmp_path: Path, routed_exact
) -> None:
    """The real path: `continue --protect` (sslora, 2 steps per task), then a routed export."""
    from medqwen_cli.training.run import continue_bundle

    quick = ["train.max_steps=2", "train.checkpoint_every=1000"]
    protect = ["continual.protect=true", "continual.protect_energy=0.6"]
    continue_bundle(bundle_dir, task="xray", overrides=quick, evaluate=False)
    result = continue_bundle(
        bundle_dir, task="ct", overrides=[*quick, *protect, "continual.protect_records=8"],
        evaluate=False,
    )  # fmt: skip
    assert result.continual["branches"] == 1
    out = tmp_path / "routed"
    merge_bundle(bundle_dir, out)
    routed_exact(bundle_dir, result.version, out, n=2)

"""merge: routed exports equal the bundle bit for bit (both loaders); dense and peft are exact
when routing is uniform, and the fidelity they report is what an independent recomputation finds.

Two tiny bundles, each with a version v0002 standing in for a trained one (perturbed experts):
`trained` (E=4, k=2, random routers: token-dependent routing) and `uniform` (E=4, k=4, zero
routers: every gate is exactly 1/4, so the mean-routed fold is the routed model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medqwen_cli.adapters import adapter_layers
from medqwen_cli.bundle import Bundle
from medqwen_cli.merge import (
    MANIFEST_FILE,
    REPORT_FILE,
    MergeError,
    load_merged,
    lowrank_svd,
    mean_gates,
    merge_bundle,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes/debug/tiny.yaml"
PIXELS = 12544  # train.max_image_pixels of the tiny recipe


def _bundle(root: Path, overrides: list[str], *, uniform: bool) -> Path:
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    init_experts(load_recipe(TINY, ["eval.max_samples=2", *overrides]), root)
    bundle = Bundle.open(root)
    gen = torch.Generator().manual_seed(1)
    adapter = {}
    for key, value in bundle.read_adapter().items():
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("router.weight"):
            adapter[key] = torch.zeros_like(value) if uniform else noise * 0.5
        else:
            adapter[key] = value + 0.3 * value.std() * noise
    bundle.append_version(
        adapter, command="test: perturbed", tasks=["xray"], recipe=bundle.manifest.recipe
    )
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory.mktemp("merge") / "trained", [], uniform=False)


@pytest.fixture(scope="module")
def uniform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory.mktemp("merge") / "uniform", ["adapter.top_k=4"], uniform=True)


def _records(ids: list[str] | None = None, n: int = 3) -> list:
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.modeling import data_cache_dir
    from medqwen_cli.recipe import DatasetSpec

    records = load_records(
        DatasetSpec(path="builtin:xray"), "train", cache_dir=data_cache_dir(),
        max_image_pixels=PIXELS,
    )  # fmt: skip
    if ids is None:
        return records[:n]
    by_id = {r.id: r for r in records}
    return [by_id[i] for i in ids]


def _batch(processor, records) -> dict:
    from medqwen_cli.data.collate import Collator

    batch = Collator(processor, max_image_pixels=PIXELS, max_length=512)(records)
    batch.pop("labels")
    return batch


def _reference(bundle: Path, version: str = "v0002"):
    from medqwen_cli.loading import load_adapted

    return load_adapted(
        Bundle.open(bundle), version, dtype="float32", device="cpu", max_pixels=PIXELS
    )


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model(**batch).logits.float()


# --------------------------------------------------------------------------- routed


def test_routed_export_equals_the_bundle_through_both_loaders(trained: Path, tmp_path: Path):
    from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

    from medqwen_cli.adapters import RoutedLoRALinear

    out = tmp_path / "routed"
    result = merge_bundle(trained, out)
    assert (result.mode, result.exact, result.version, result.base_weights) == (
        "routed", True, "v0002", "hardlink",
    )  # fmt: skip
    assert result.fidelity is None and result.layers == 14
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert (
        manifest["source"]["bundle"] == str(trained.resolve())
        and manifest["source"]["version"] == "v0002"
    )
    assert manifest["mode"] == "routed" and manifest["exact"] is True
    base = Path(manifest["base"]["path"]) / "model.safetensors"
    assert (out / "base-model.safetensors").stat().st_ino == base.stat().st_ino  # a hard link

    ref = _reference(trained)
    batch = _batch(ref.processor, _records())
    expected = _logits(ref.model, batch)

    merged = load_merged(out, dtype="float32", device="cpu")
    assert type(merged) is Qwen2VLForConditionalGeneration
    assert sum(isinstance(m, RoutedLoRALinear) for m in merged.modules()) == 14
    assert torch.equal(_logits(merged, batch), expected)

    remote = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=True, dtype=torch.float32
    ).eval()
    assert type(remote).__name__ == "MedqwenRoutedQwen2VLForConditionalGeneration"
    assert torch.equal(_logits(remote, batch), expected)
    # Without remote code the export is refused, never silently loaded as the bare base.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=False)


def test_routed_export_in_bfloat16_keeps_adapter_float32(trained: Path, tmp_path: Path):
    from transformers import AutoModelForImageTextToText

    from medqwen_cli.loading import load_adapted

    out = tmp_path / "routed"
    merge_bundle(trained, out)
    ref = load_adapted(Bundle.open(trained), "v0002", dtype="bfloat16", device="cpu")
    batch = _batch(ref.processor, _records(n=2))
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    remote = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=True, dtype=torch.bfloat16
    ).eval()
    layer = remote.model.language_model.layers[0].mlp.up_proj
    assert layer.weight.dtype == torch.bfloat16
    assert {t.dtype for t in (layer.lora_A, layer.init_B, layer.router.weight, layer.scale)} == {
        torch.float32
    }
    assert torch.equal(_logits(remote, batch), _logits(ref.model, batch))


def test_routed_qwen2_5_vl_export(tmp_path: Path) -> None:
    """The Qwen2.5-VL classes of the modeling file; v0001's random routers already route."""
    from transformers import AutoModelForImageTextToText

    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    bundle = tmp_path / "b25"
    init_experts(load_recipe(TINY, ["model.base=tiny-qwen2.5-vl"]), bundle)
    out = tmp_path / "routed25"
    merge_bundle(bundle, out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "medqwen_routed_qwen2_5_vl"
    ref = _reference(bundle, "v0001")
    batch = _batch(ref.processor, _records(n=2))
    expected = _logits(ref.model, batch)
    assert torch.equal(_logits(load_merged(out, dtype="float32", device="cpu"), batch), expected)
    remote = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=True, dtype=torch.float32
    ).eval()
    assert type(remote).__name__ == "MedqwenRoutedQwen2_5_VLForConditionalGeneration"
    assert torch.equal(_logits(remote, batch), expected)


def test_remote_layer_matches_medqwen_layer_bit_for_bit() -> None:
    """merge_remote.RoutedLinear repeats RoutedLoRALinear's op order (change them together)."""
    from torch import nn

    from medqwen_cli.adapters import RoutedLoRALinear, init_layer
    from medqwen_cli.merge_remote import RoutedLinear

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


# --------------------------------------------------------------------------- dense and peft


@pytest.mark.parametrize("mode", ["dense", "peft"])
def test_uniform_routing_folds_exactly(uniform: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / mode
    result = merge_bundle(uniform, out, mode=mode, calibration_samples=5, evaluate=False)
    assert result.exact is False and result.calibration["held_out_samples"] == 1
    fid = result.fidelity
    assert fid.tokens > 0 and fid.mean_relative_logit_error < 1e-5 and fid.top1_agreement == 1.0
    report = json.loads((out / REPORT_FILE).read_text())
    assert all(g == [0.25] * 4 for g in report["mean_gates"].values())
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["fidelity"]["mean_relative_logit_error"] == fid.mean_relative_logit_error
    if mode == "peft":
        assert max(report["peft"]["dropped_energy"].values()) < 1e-12
        return
    # the folded weight, recomputed from the bundle's tensors: W0 - (s/E) B0 A0 + (s/E) B A
    from safetensors.torch import load_file

    bundle = Bundle.open(uniform)
    init, adapter = bundle.read_init(), bundle.read_adapter("v0002")
    base = load_file(Path(manifest["base"]["path"]) / "model.safetensors")
    dense = load_file(out / "model.safetensors")
    name = "language_model.layers.1.mlp.down_proj"
    s = init[f"{name}.scale"].double()
    expected = (
        base["model.layers.1.mlp.down_proj.weight"].double()
        - s / 4 * init[f"{name}.init_B"].double() @ init[f"{name}.init_A"].double()
        + s / 4 * adapter[f"{name}.lora_B"].double() @ adapter[f"{name}.lora_A"].double()
    )
    assert torch.allclose(
        dense["model.layers.1.mlp.down_proj.weight"].double(), expected, atol=1e-6
    )
    assert torch.equal(dense["lm_head.weight"], base["lm_head.weight"])  # not adapted: untouched


def _independent_fidelity(trained: Path, out: Path, mode: str) -> tuple[float, float, int]:
    """Mean relative logit error, top-1 agreement and token count, one held-out sample at a
    time, with the export loaded through plain transformers / PEFT."""
    from transformers import Qwen2VLForConditionalGeneration

    ref = _reference(trained)
    if mode == "dense":
        model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    else:
        peft = pytest.importorskip("peft", reason="peft is not installed (pip install peft)")
        base = Qwen2VLForConditionalGeneration.from_pretrained(
            json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"],
            dtype=torch.float32,
        )
        model = peft.PeftModel.from_pretrained(base, out)
    model.eval()
    ids = json.loads((out / REPORT_FILE).read_text())["calibration"]["held_out_ids"]
    errors, agree = [], 0
    for record in _records(ids):
        batch = _batch(ref.processor, [record])
        z, z2 = _logits(ref.model, batch)[0], _logits(model, batch)[0]  # (L, V)
        for t in range(z.shape[0]):
            errors.append(float(torch.linalg.norm(z2[t] - z[t]) / torch.linalg.norm(z[t])))
            agree += int(z2[t].argmax() == z[t].argmax())
    return sum(errors) / len(errors), agree / len(errors), len(errors)


@pytest.mark.parametrize("mode", ["dense", "peft"])
def test_reported_fidelity_is_what_an_independent_recomputation_finds(
    trained: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / mode
    result = merge_bundle(trained, out, mode=mode, calibration_samples=10, evaluate=False)
    fid = result.fidelity
    assert result.calibration == {
        "tasks": ["xray"], "split": "train", "fit_samples": 8, "held_out_samples": 2,
        "requested_samples": 10,
    }  # fmt: skip
    error, agreement, tokens = _independent_fidelity(trained, out, mode)
    assert fid.tokens == tokens
    assert fid.mean_relative_logit_error > 1e-3  # token routing is not a constant: approximate
    assert fid.mean_relative_logit_error == pytest.approx(error, rel=1e-4)
    assert abs(fid.top1_agreement - agreement) <= 1 / tokens  # at most one near-tie may flip
    if mode == "peft":
        assert "PeftModel" in fid.measured_with and result.peft_rank == 32  # 2r: lossless
    else:
        assert "Qwen2VLForConditionalGeneration" in fid.measured_with


def test_peft_rank_truncation_is_reported(trained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "peft4"
    result = merge_bundle(trained, out, mode="peft", rank=4, calibration_samples=4, evaluate=False)
    config = json.loads((out / "adapter_config.json").read_text())
    assert result.peft_rank == 4 and config["r"] == 4 and config["lora_alpha"] == 4
    weights = load_file(out / "adapter_model.safetensors")
    key = "base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.weight"
    assert weights[key].shape == (4, 64) and len(weights) == 28
    dropped = json.loads((out / REPORT_FILE).read_text())["peft"]["dropped_energy"]
    assert len(dropped) == 14 and min(dropped.values()) > 0


def test_lowrank_svd_reconstructs_the_product() -> None:
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((40, 8, 30), (6, 8, 30), (40, 8, 5)):
        p = torch.randn(m, k, generator=gen, dtype=torch.float64)
        q = torch.randn(k, n, generator=gen, dtype=torch.float64)
        u, s, vh = lowrank_svd(p, q)
        assert torch.allclose((u * s) @ vh, p @ q, atol=1e-10)
        assert torch.all(s[:-1] >= s[1:])


def test_mean_gates_average_real_tokens_only(trained: Path) -> None:
    """Recomputed from each router's input: softmax, top-k, renormalise, average over the
    tokens the attention mask keeps (the batch is padded: lengths differ)."""
    ref = _reference(trained)
    batch = _batch(ref.processor, _records(n=3))
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


# --------------------------------------------------------------------------- safety


def test_existing_output_is_refused_and_replaced_only_with_overwrite(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "routed"
    first = merge_bundle(trained, out, copy_base=True)
    assert first.base_weights == "copy"
    assert (out / "base-model.safetensors").stat().st_nlink == 1
    with pytest.raises(MergeError, match="already exists"):
        merge_bundle(trained, out)
    stamp = json.loads((out / MANIFEST_FILE).read_text())["created"]
    merge_bundle(trained, out, version="v0001", overwrite=True)
    replaced = json.loads((out / MANIFEST_FILE).read_text())
    assert replaced["source"]["version"] == "v0001" and replaced["created"] >= stamp
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(MergeError, match="not a medqwen export"):
        merge_bundle(trained, other, overwrite=True)
    assert (other / "todo.txt").read_text() == "keep me"
    with pytest.raises(MergeError, match="the bundle or its base"):
        merge_bundle(trained, trained.parent, overwrite=True)  # would hold the bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "routed"]  # no leftovers


def test_a_failed_export_leaves_the_previous_one(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medqwen_cli.merge import export as merge_mod

    out = tmp_path / "dense"
    merge_bundle(trained, out, mode="dense", calibration_samples=2, evaluate=False)
    before = sorted(p.name for p in out.iterdir())

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(merge_mod, "logit_fidelity", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_bundle(trained, out, mode="peft", overwrite=True, calibration_samples=2)
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / MANIFEST_FILE).read_text())["mode"] == "dense"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


def test_task_metric_before_and_after(trained: Path, tmp_path: Path) -> None:
    """Routed with --calibration measures too; exact, so the task metric does not move."""
    result = merge_bundle(trained, tmp_path / "r", calibration=["xray"], calibration_samples=3)
    fid = result.fidelity
    assert fid.mean_relative_logit_error == 0.0 and fid.top1_agreement == 1.0
    (row,) = fid.task_metrics
    assert row["task"] == "xray" and row["n"] == 2 and row["metric"]
    assert row["before"] == row["after"]


def test_load_merged_errors_and_light_import(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="not a medqwen export"):
        load_merged(tmp_path)
    code = (
        "import sys, medqwen_cli; assert 'torch' not in sys.modules; "
        "f = medqwen_cli.load_merged; assert callable(f) and 'torch' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_remote_names_agree_with_medqwen_naming() -> None:
    """The modeling file keeps its own copy of the canonical names (it cannot import medqwen)."""
    from medqwen_cli.adapters.naming import canonical_module_name
    from medqwen_cli.merge_remote import canonical_module_name as remote_name

    names = [
        "model.language_model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj",
        "model.visual.blocks.0.attn.qkv", "visual.merger.mlp.0", "lm_head",
        "module._orig_mod.model.language_model.layers.3.mlp.down_proj",
    ]  # fmt: skip
    assert [remote_name(n) for n in names] == [canonical_module_name(n) for n in names]

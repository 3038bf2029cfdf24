"""merge_bundle (routed mode, end to end): the export equals the bundle bit for bit through
both loaders (medqwen's and transformers' trust_remote_code); existing output is refused or
replaced only as asked, and a failed export leaves the previous one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.merge import MANIFEST_FILE, MergeError, merge_bundle


def test_routed_export_equals_the_bundle_through_both_loaders(
    trained: Path, tmp_path: Path, routed_exact
) -> None:
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

    merged, remote, _, _ = routed_exact(trained, "v0002", out)
    assert type(merged) is Qwen2VLForConditionalGeneration
    assert sum(isinstance(m, RoutedLoRALinear) for m in merged.modules()) == 14
    assert type(remote).__name__ == "MedqwenRoutedQwen2VLForConditionalGeneration"
    # Without remote code the export is refused, never silently loaded as the bare base.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=False)


def test_routed_export_in_bfloat16_keeps_adapter_float32(
    trained: Path, tmp_path: Path, records, batch_of, logits
) -> None:
    from transformers import AutoModelForImageTextToText

    from medqwen_cli.loading import load_adapted

    out = tmp_path / "routed"
    merge_bundle(trained, out)
    ref = load_adapted(Bundle.open(trained), "v0002", dtype="bfloat16", device="cpu")
    batch = batch_of(ref.processor, records(n=2))
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    remote = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=True, dtype=torch.bfloat16
    ).eval()
    layer = remote.model.language_model.layers[0].mlp.up_proj
    assert layer.weight.dtype == torch.bfloat16
    assert {t.dtype for t in (layer.lora_A, layer.init_B, layer.router.weight, layer.scale)} == {
        torch.float32
    }
    assert torch.equal(logits(remote, batch), logits(ref.model, batch))


def test_routed_qwen2_5_vl_export(tmp_path: Path, tiny_recipe: Path, routed_exact) -> None:
    """The Qwen2.5-VL classes of the modeling file; v0001's random routers already route."""

    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    bundle = tmp_path / "b25"
    init_experts(load_recipe(tiny_recipe, ["model.base=tiny-qwen2.5-vl"]), bundle)
    out = tmp_path / "routed25"
    merge_bundle(bundle, out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "medqwen_routed_qwen2_5_vl"
    _, remote, _, _ = routed_exact(bundle, "v0001", out, n=2)
    assert type(remote).__name__ == "MedqwenRoutedQwen2_5_VLForConditionalGeneration"


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

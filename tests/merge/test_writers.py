"""The writers: dense and peft are exact when routing is uniform (the folded weight recomputed
from the bundle's tensors), peft truncation is reported, and the thin-QR SVD is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.merge import MANIFEST_FILE, REPORT_FILE, lowrank_svd, merge_bundle


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

"""The method facts of adapters/config.py, and that the recipe reaches them without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medqwen_cli.adapters.config import FIXED_AT_INIT, METHODS, AdapterConfig


@pytest.mark.parametrize(
    ("method", "experts", "spectral", "routed"),
    [("sslora", 4, True, True), ("moelora", 4, False, True), ("lora", 1, False, False),
     ("pissa", 1, True, False)],
)  # fmt: skip
def test_method_facts(method: str, experts: int, spectral: bool, routed: bool) -> None:
    cfg = AdapterConfig(method=method, experts=4, top_k=2, rank=8)
    assert (cfg.num_experts, cfg.is_spectral, cfg.is_routed) == (experts, spectral, routed)
    assert cfg.routed_top_k == min(2, experts) and cfg.expert_rank == 8 // experts
    assert method in METHODS


def test_one_expert_has_no_router_whatever_the_method() -> None:
    cfg = AdapterConfig(method="moelora", experts=1, top_k=1, rank=8)
    assert not cfg.is_routed and cfg.routed_top_k == 1


def test_fixed_changes_names_only_fields_fixed_at_init() -> None:
    stored = AdapterConfig(method="sslora", experts=4, rank=8).model_dump(mode="json")
    changed = AdapterConfig(method="sslora", experts=4, rank=16, dropout=0.1, balance_loss=0.0)
    assert changed.fixed_changes(stored) == ["rank"]
    assert changed.fixed_changes({}) == []  # fields a manifest lacks are not compared
    assert "dropout" not in FIXED_AT_INIT and "balance_loss" not in FIXED_AT_INIT


def test_the_recipe_and_the_config_load_without_torch() -> None:
    probe = "import sys, medqwen_cli.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from medqwen_cli.recipe import AdapterConfig as FromRecipe

    assert FromRecipe is AdapterConfig

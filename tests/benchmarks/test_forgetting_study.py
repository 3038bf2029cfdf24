"""The forgetting study's recipe variants and its summary table (the runs themselves are long)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from medqwen_cli.recipe import build_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks/forgetting_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("forgetting_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_are_valid_recipes_with_typed_values(study) -> None:
    data = study.recipe_for(
        "tiny-qwen2-vl", "sslora", 1, 4, 0.01, 6, 2,
        ["adapter.rho=1", "adapter.segments=principal", "adapter.balance_loss=0.0"],
    )  # fmt: skip
    recipe = build_recipe(data, check_paths=False)
    assert recipe.adapter.rho == 1 and recipe.adapter.segments == "principal"
    assert recipe.adapter.balance_loss == 0.0 and recipe.adapter.seed == 1
    assert recipe.adapter.rank == 16 and recipe.train.max_steps == 4  # the rest is unchanged
    assert study.label_of("sslora", ["adapter.rho=1"]) == "sslora adapter.rho=1"


def test_summary_has_one_row_per_variant_with_spread_over_seeds(study) -> None:
    def run(label: str, seed: int, acc: float, bwt: float) -> dict:
        rows = [[0.3, 0.3], [0.5, 0.2], [0.4, 0.6]]  # base, after A, after B
        return {
            "method": label.split()[0], "label": label, "seed": seed, "trainable_params": 10,
            "acc": acc, "bwt": bwt, "forgetting": -bwt, "matrix": {"values": rows},
            "per_task": [
                {"task": "A", "drop": {"value": 0.1}, "relative_drop": {"value": 0.2}},
                {"task": "B", "drop": {"value": 0.0}, "relative_drop": {"value": 0.0}},
            ],
        }  # fmt: skip

    table = study.summarise(
        [
            run("lora", 0, 0.4, -0.1),
            run("lora", 1, 0.6, -0.3),
            run("sslora adapter.rho=1", 0, 0.5, -0.05),
        ]
    )
    overall, per_task = table.split("\n\n")
    lines = overall.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert lines[2].startswith("| lora | 2 | 10 | 0.500 ± 0.141 | -0.200 ± 0.141 |")
    assert lines[3].startswith("| sslora adapter.rho=1 | 1 | 10 | 0.500 | -0.050 |")
    assert lines[3].endswith("| 0.500 | 0.400 | 0.200 |")  # A after A, A after B, relative drop
    assert per_task.splitlines()[0] == "| method | A: drop | A: rel. drop |"  # B was trained last
    assert per_task.splitlines()[2] == "| lora | 0.100 ± 0.000 | 0.200 ± 0.000 |"

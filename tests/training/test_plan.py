"""The plan: what a run may change and what it cannot train is refused before any work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import RecipeError
from medqwen_cli.training.checkpoint import run_key
from medqwen_cli.training.plan import plan_run, training_precision
from medqwen_cli.training.run import train_bundle

FAST = ["train.checkpoint_every=1000", "train.log_every=1"]


def test_plan_resolves_the_run_and_keys_its_work_directory(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    plan = plan_run(
        bundle, tasks=["xray"], recipe_path=None, overrides=["train.lr=0.01"], watch=["ct"],
        eval_every=None, kind="continue",
    )  # fmt: skip
    assert (plan.parent, plan.tasks, plan.kind) == ("v0001", ["xray"], "continue")
    assert plan.recipe.train.lr == 0.01 and plan.recipe_data["train"]["lr"] == 0.01
    assert (plan.precision, plan.dtype) == training_precision(plan.recipe, plan.device)
    assert list(plan.watch) == ["ct"] and plan.eval_every == 10
    assert plan.key == run_key("v0001", ["xray"], plan.recipe_data, "continue")
    assert plan.run_dir == bundle.work_dir / plan.key and not plan.run_dir.exists()


def test_refuses_a_change_of_adapter_structure(bundle_dir: Path) -> None:
    with pytest.raises(RecipeError, match="rank"):
        train_bundle(bundle_dir, tasks=["xray"], overrides=["adapter.rank=8"])
    assert Bundle.open(bundle_dir).head == "v0001"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.precision=fp16", "train.precision=fp16 (float16 mixed precision) needs a CUDA"),
        ("model.dtype=float16", "model.dtype=float16 trains only under train.precision=fp16"),
    ],
)
def test_half_precision_that_cannot_train_on_cpu_is_refused_before_any_work(
    bundle_dir: Path, override: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medqwen_cli import loading

    monkeypatch.setattr(loading, "load_adapted", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(RecipeError, match=re.escape(expected)) as err:
        train_bundle(bundle_dir, tasks=["xray"], overrides=[*FAST, override])
    assert "--set " in (err.value.hint or "")
    assert not (bundle_dir / "work").exists() and Bundle.open(bundle_dir).head == "v0001"
    assert re.search(r"precision=fp32|dtype=float32", err.value.hint or "")  # the fix, named


@pytest.mark.parametrize(
    ("override", "expected"),
    [("train.precision=bf16", ("bf16", "auto")), ("model.dtype=bfloat16", ("fp32", "bfloat16"))],
)
def test_bfloat16_trains_on_cpu(override: str, expected: tuple[str, str]) -> None:
    """bf16 autocast and bfloat16 weights are honoured on CPU, not refused or rewritten."""
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.training.plan import training_precision

    assert training_precision(load_recipe(None, [override]), "cpu") == expected
    assert training_precision(load_recipe(None, []), "cpu") == ("fp32", "float32")

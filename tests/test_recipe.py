"""Recipes: shipped files validate; every kind of bad input is reported with path and hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from medqwen_cli.errors import RecipeError
from medqwen_cli.recipe import (
    Recipe,
    check_overrides,
    load_recipe,
    override_recipe,
    schema_markdown,
)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> dict[str, str]:
    """What load_recipe reports for a recipe that must be refused: message by field path."""
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, text))
    return dict(err.value.problems)


def test_shipped_debug_recipe_validates() -> None:
    recipe = load_recipe(REPO / "recipes/debug/tiny.yaml")
    assert recipe.model.base == "tiny-qwen2-vl"
    assert set(recipe.tasks) == {"xray", "ct", "pathology"}
    assert recipe.adapter.expert_rank == 4


def test_shipped_2b_recipe_schema_is_valid_and_only_data_paths_are_missing() -> None:
    recipe = load_recipe(REPO / "recipes/qwen2vl-2b/sslora.yaml", check_paths=False)
    assert (recipe.adapter.experts, recipe.adapter.top_k, recipe.adapter.rank) == (8, 2, 32)
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes/qwen2vl-2b/sslora.yaml")
    assert {p for p, _ in err.value.problems} == {
        "data.datasets.0.path",
        "tasks.vqa_rad.datasets.0.path",
        "tasks.slake.datasets.0.path",
        "tasks.pathvqa.datasets.0.path",
    }


def test_all_problems_reported_at_once_with_suggestions(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, "model:\n  bse: x\nadapter:\n  rank: big\n  methd: lora\ntrain:\n  lr: -1\n"
    )
    assert set(problems) == {"model.bse", "adapter.rank", "adapter.methd", "train.lr"}
    assert "did you mean 'base'" in problems["model.bse"]
    assert "did you mean 'method'" in problems["adapter.methd"]
    assert "integer" in problems["adapter.rank"]


def test_unknown_top_level_key_and_nested_list_key(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, "trian: {}\ndata:\n  datasets:\n    - path: builtin:xray\n      wieght: 2\n"
    )
    assert "did you mean 'train'" in problems["trian"]
    assert "did you mean 'weight'" in problems["data.datasets.0.wieght"]


def test_missing_dataset_path_and_unknown_builtin(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path, "data:\n  datasets:\n    - path: nowhere/x.jsonl\n    - path: builtin:xrya\n"
    )
    assert str(tmp_path / "nowhere/x.jsonl") in problems["data.datasets.0.path"]
    assert "did you mean 'xray'" in problems["data.datasets.1.path"]


def test_relative_paths_resolve_against_recipe_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("")
    path = write(tmp_path, "data:\n  datasets:\n    - path: d\n")
    assert load_recipe(path).data.datasets[0].path == str(tmp_path / "d")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   \n# only a comment\n", "empty"),
        ("model: [1,\n", "not valid YAML at line"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_empty_and_invalid_files(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle):
        load_recipe(write(tmp_path, text))


def test_missing_file_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid JSON at line 1"):
        load_recipe(write(tmp_path, "{bad", "r.json"))


def test_set_overrides_are_typed_by_the_schema(tmp_path: Path) -> None:
    recipe = load_recipe(
        REPO / "recipes/debug/tiny.yaml",
        [
            "adapter.rank=8",
            "train.lr=1e-4",
            "adapter.method=moelora",
            "tasks.ct.datasets.0.weight=3",
        ],
    )
    assert recipe.adapter.rank == 8 and recipe.train.lr == pytest.approx(1e-4)
    assert recipe.adapter.method == "moelora"
    assert recipe.tasks["ct"].datasets[0].weight == 3.0


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("adapter.rnak=3", "did you mean 'rank'"),
        ("nosuch.x=1", "has no field 'nosuch'"),
        ("train.lr.x=1", "is a value"),
        ("novalue", "key.path=value"),
    ],
)
def test_set_on_unknown_path_is_refused(item: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle):
        load_recipe(REPO / "recipes/debug/tiny.yaml", [item])


def test_set_wrong_type_reports_the_path() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes/debug/tiny.yaml", ["train.batch_size=many"])
    assert [p for p, _ in err.value.problems] == ["train.batch_size"]


def test_override_a_loaded_recipe_leaves_the_original_alone() -> None:
    loaded = load_recipe(REPO / "recipes/debug/tiny.yaml")
    changed = override_recipe(loaded, ["eval.max_samples=20", "eval.batch_size=2"])
    assert (changed.eval.max_samples, changed.eval.batch_size) == (20, 2)
    assert loaded.eval.max_samples != 20 and changed.tasks == loaded.tasks
    assert override_recipe(loaded, []) is loaded
    with pytest.raises(RecipeError) as err:
        override_recipe(loaded, ["eval.batch_size=0", "train.lr=fast"])
    assert [p for p, _ in err.value.problems] == ["train.lr", "eval.batch_size"]  # all at once
    assert check_overrides(["eval.max_samples=3", "tasks.new.datasets.0.path=x"]) == [
        "eval.max_samples",
        "tasks.new.datasets.0.path",
    ]
    with pytest.raises(RecipeError, match="did you mean 'max_samples'"):
        check_overrides(["eval.max_sample=3"])


@pytest.mark.parametrize(
    ("adapter", "needle"),
    [
        ({"top_k": 9, "experts": 8}, "top_k"),
        ({"rank": 30, "experts": 8}, "divisible"),
        ({"method": "sslora2"}, "method"),
        ({"targets": ["("]}, "invalid regex"),
    ],
)
def test_adapter_shape_rules(adapter: dict, needle: str) -> None:
    with pytest.raises(Exception, match=needle):
        Recipe.model_validate({"adapter": adapter})


def test_lora_ignores_expert_count_rules() -> None:
    cfg = Recipe.model_validate({"adapter": {"method": "lora", "rank": 30, "experts": 8}}).adapter
    assert cfg.num_experts == 1 and cfg.expert_rank == 30


def test_unknown_task_name_suggests() -> None:
    recipe = load_recipe(REPO / "recipes/debug/tiny.yaml")
    with pytest.raises(RecipeError, match="did you mean 'xray'"):
        recipe.task_datasets("xary")
    assert recipe.task_datasets("builtin:mri")[0].path == "builtin:mri"


def test_docs_reference_is_generated_from_the_schema() -> None:
    text = (REPO / "docs/recipes.md").read_text()
    block = text.split("<!-- schema:start -->\n", 1)[1].split("<!-- schema:end -->", 1)[0]
    assert block == schema_markdown(), "docs/recipes.md is stale: regenerate it (see README)"


def test_cli_choices_are_the_schema_literals() -> None:
    """choices.py (torch- and pydantic-free, for CLI help and checks) lists exactly what the
    schemas accept: a Literal cannot be built from a tuple, so both are written out."""
    from typing import get_args

    from medqwen_cli.adapters.config import Method
    from medqwen_cli.choices import METHODS, SCORINGS
    from medqwen_cli.recipe import EvalConfig

    assert get_args(Method) == METHODS
    assert get_args(EvalConfig.model_fields["scoring"].annotation) == SCORINGS

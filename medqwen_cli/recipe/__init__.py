"""Recipes: one pydantic model for everything a run needs, loaded from YAML or JSON.

A recipe is validated as a whole: every problem (unknown key, wrong type, missing dataset) is
collected and reported at once with its dotted path, and a misspelt key gets a "did you mean".
`--set a.b=value` overrides any field; the value is parsed as YAML and typed by the schema.

Relative dataset paths are resolved against the directory of the recipe file, so a recipe can be
moved together with its data and a resolved recipe (stored in a bundle) needs no working directory.
Dataset paths of the form `builtin:NAME` name a task the package generates itself (no download).

sections   the sections (model, data, regime, tasks, train, eval, continual) as pydantic models
model      `Recipe`: every section, and a task's datasets by name
loading    YAML / JSON, `--set` overrides, every problem at once, the docs reference
"""

from medqwen_cli.adapters.config import DEFAULT_EXCLUDE, DEFAULT_TARGETS, AdapterConfig, Method
from medqwen_cli.recipe.loading import (
    SECTIONS,
    apply_overrides,
    build_recipe,
    check_overrides,
    dataset_problems,
    load_recipe,
    override_recipe,
    parse_override,
    recipe_to_dict,
    schema_markdown,
)
from medqwen_cli.recipe.model import Recipe
from medqwen_cli.recipe.sections import (
    BUILTIN_TASKS,
    TASK_TYPES,
    ContinualConfig,
    DataConfig,
    DatasetFormat,
    DatasetSpec,
    EvalConfig,
    ModelConfig,
    RegimeConfig,
    Scoring,
    TaskConfig,
    TaskType,
    TrainConfig,
)

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_EXCLUDE",
    "DEFAULT_TARGETS",
    "SECTIONS",
    "TASK_TYPES",
    "AdapterConfig",
    "ContinualConfig",
    "DataConfig",
    "DatasetFormat",
    "DatasetSpec",
    "EvalConfig",
    "Method",
    "ModelConfig",
    "Recipe",
    "RegimeConfig",
    "Scoring",
    "TaskConfig",
    "TaskType",
    "TrainConfig",
    "apply_overrides",
    "build_recipe",
    "check_overrides",
    "dataset_problems",
    "load_recipe",
    "override_recipe",
    "parse_override",
    "recipe_to_dict",
    "schema_markdown",
]

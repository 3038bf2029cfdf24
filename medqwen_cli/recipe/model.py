"""`Recipe`: every section in one model, and the datasets of a task by name."""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import Field

from medqwen_cli.acceptance.schema import AcceptanceConfig
from medqwen_cli.adapters.config import AdapterConfig
from medqwen_cli.errors import RecipeError
from medqwen_cli.recipe.sections import (
    ContinualConfig,
    DataConfig,
    DatasetSpec,
    EvalConfig,
    ModelConfig,
    RegimeConfig,
    TaskConfig,
    TrainConfig,
    _Strict,
)


class Recipe(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The frozen base model.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="The adapter method.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data of `train`.")
    regime: RegimeConfig = Field(default_factory=RegimeConfig, description="How datasets mix.")
    tasks: dict[str, TaskConfig] = Field(
        default_factory=dict, description="Named tasks for `train --task` and `continue --task`."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    continual: ContinualConfig = Field(
        default_factory=ContinualConfig,
        description="How a run keeps the lineage's earlier tasks (docs/continual.md).",
    )
    acceptance: AcceptanceConfig = Field(
        default_factory=AcceptanceConfig,
        description="Criteria a new version must meet to become the default (docs/report.md).",
    )

    def task_datasets(self, name: str) -> list[DatasetSpec]:
        """Datasets of task `name`: a recipe task, a dataset of `data.datasets` by name, or a
        dataset path / builtin:NAME given directly."""
        if name in self.tasks:
            return list(self.tasks[name].datasets)
        named = [d for d in self.data.datasets if d.display_name == name]
        if named:
            return named
        if name.startswith("builtin:") or Path(name).exists():
            return [DatasetSpec(path=str(Path(name).resolve()) if Path(name).exists() else name)]
        known = ", ".join(sorted(self.tasks)) or "none"
        if "/" in name or "\\" in name or name.startswith((".", "~")):  # meant as a path
            raise RecipeError(
                f"dataset path {name!r} does not exist ({Path(name).expanduser().absolute()}); "
                f"nor is it a task of the recipe (tasks: {known})",
                "check the path (a directory with train.jsonl / eval.jsonl, or a data file), "
                "or give a recipe task or builtin:NAME",
            )
        close = difflib.get_close_matches(name, list(self.tasks), n=1)
        raise RecipeError(
            f"unknown task {name!r}: not a task of the recipe (tasks: {known}) nor an existing path",
            f"did you mean {close[0]!r}?"
            if close
            else "define it under `tasks:` in the recipe, or pass a dataset path or builtin:NAME",
        )

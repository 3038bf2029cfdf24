"""Record types are defined once (recipe.TaskType); every module that lists them agrees."""

from __future__ import annotations

from medqwen_cli.data.records import TASK_TYPES as RECORD_TYPES
from medqwen_cli.data.synthetic.questions import TYPES
from medqwen_cli.evaluation.tasks import HEADLINE_METRICS, TASK_TYPES
from medqwen_cli.recipe import TASK_TYPES as RECIPE_TYPES


def test_one_list_of_record_types() -> None:
    assert TASK_TYPES is RECIPE_TYPES is RECORD_TYPES is TYPES
    assert tuple(HEADLINE_METRICS) == TASK_TYPES


def test_one_base_row_id() -> None:
    from medqwen_cli.bundle import BASE_VERSION
    from medqwen_cli.evaluation import api, predict
    from medqwen_cli.forgetting import accuracy_matrix

    assert api.BASE_VERSION is predict.BASE_VERSION is BASE_VERSION == "base"
    assert accuracy_matrix.__kwdefaults__["base"] == BASE_VERSION

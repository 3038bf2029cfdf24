"""Task types and their headline metrics (no heavy imports: the CLI reads this for labels).

Headline choices, one number per task for the accuracy matrix and the forgetting report:
- vqa_closed: accuracy.
- vqa_open: token F1, not token recall. Recall (LLaVA-Med's "open recall") only asks that the
  reference words appear, so a verbose answer that lists every plausible finding scores 1.0;
  F1 also charges the extra words. Recall and exact match are still reported.
- report: ROUGE-L, not CIDEr. ROUGE-L is per item and bounded in [0, 1] like the other headlines,
  so ACC/BWT averaged over tasks of different types stay on one scale; CIDEr-D lies in [0, 10],
  and its idf comes from the evaluated set, so it moves with the set's size and content (a set of
  one report scores 0). BLEU-1..4 and CIDEr-D are still reported.
- classification: accuracy.
- pope: F1 (of "yes"), which, unlike accuracy, is not flattered by a model that answers "no" to
  every probe of a balanced split.
"""

from __future__ import annotations

from medqwen_cli.errors import EvaluationError
from medqwen_cli.recipe import TASK_TYPES

HEADLINE_METRICS: dict[str, str] = {  # one per TASK_TYPES entry, in its order (tested)
    "vqa_closed": "accuracy",
    "vqa_open": "token_f1",
    "report": "rouge_l",
    "classification": "accuracy",
    "pope": "f1",
}


def check_task_type(task_type: str) -> None:
    if task_type not in HEADLINE_METRICS:
        raise EvaluationError(
            f"unknown task type {task_type!r}",
            hint=f"use one of {', '.join(TASK_TYPES)}",
        )


def headline_metric(task_type: str) -> str:
    """The metric name that stands for `task_type` in the accuracy matrix."""
    check_task_type(task_type)
    return HEADLINE_METRICS[task_type]

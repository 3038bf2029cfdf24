"""Evaluation: task metrics (offline `evaluate.Metric` subclasses) and `score_task`.

Importing this package is cheap; `evaluate`, sacrebleu, rouge_score and scikit-learn load on the
first `score_task` call.
"""

from medqwen_cli.evaluation.scoring import TaskScores, score_task
from medqwen_cli.evaluation.tasks import HEADLINE_METRICS, TASK_TYPES, headline_metric

__all__ = ["HEADLINE_METRICS", "TASK_TYPES", "TaskScores", "headline_metric", "score_task"]

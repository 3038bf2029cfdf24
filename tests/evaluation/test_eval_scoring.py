"""score_task / headline_metric contract, offline operation and cache behaviour."""

from __future__ import annotations

import json
import os

import evaluate
import pytest

from medqwen_cli.errors import EvaluationError
from medqwen_cli.evaluation import TASK_TYPES, headline_metric, metrics, score_task
from medqwen_cli.evaluation.metrics import ClosedVqaAccuracy
from medqwen_cli.evaluation.metrics._base import scratch_dir


def test_headline_metrics():
    assert {t: headline_metric(t) for t in TASK_TYPES} == {
        "vqa_closed": "accuracy",
        "vqa_open": "token_f1",
        "report": "rouge_l",
        "classification": "accuracy",
        "pope": "f1",
    }
    with pytest.raises(EvaluationError, match="unknown task type"):
        headline_metric("segmentation")


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_every_task_returns_its_headline(task_type):
    preds, refs = ["yes", "no"], ["yes", "yes"]
    scores = score_task(task_type, preds, refs)
    assert scores.headline == headline_metric(task_type)
    assert scores.headline_value == scores[scores.headline]
    json.dumps(scores)  # a plain dict for the runners


def test_input_errors():
    with pytest.raises(EvaluationError, match="2 predictions for 1 references"):
        score_task("vqa_open", ["a", "b"], ["a"])
    with pytest.raises(EvaluationError, match="no pope items"):
        score_task("pope", [], [])
    with pytest.raises(EvaluationError, match="unexpected option"):
        score_task("vqa_open", ["a"], ["a"], choices=[["a"]])
    with pytest.raises(EvaluationError, match="expected text"):
        score_task("vqa_closed", [1], ["yes"])


@pytest.mark.parametrize("name", metrics.__all__)
def test_metrics_are_offline_evaluate_metrics_kept_in_memory(name):
    metric = getattr(metrics, name)()
    assert isinstance(metric, evaluate.Metric)
    assert metric.keep_in_memory


def test_metric_instances_keep_their_own_data_and_write_no_files():
    # Two instances fed in turn keep their own data (no shared cache file).
    first, second = ClosedVqaAccuracy(), ClosedVqaAccuracy()
    first.add_batch(predictions=["yes"], references=["yes"])
    second.add_batch(predictions=["no"], references=["yes"])
    first.add_batch(predictions=["no"], references=["no"])
    assert first.compute()["accuracy"] == 1.0
    assert second.compute()["accuracy"] == 0.0
    # Nothing but (empty) directories is ever written under the scratch directory.
    score_task("report", ["small effusion", "normal"], ["small effusion", "no effusion"])
    written = [f for _, _, files in os.walk(scratch_dir()) for f in files]
    assert written == []


def test_missing_backend_says_how_to_install():
    from medqwen_cli.evaluation.metrics._base import backend

    with pytest.raises(EvaluationError) as info:
        backend("no_such_metric_backend")
    assert "pip install -c constraints.txt" in info.value.hint

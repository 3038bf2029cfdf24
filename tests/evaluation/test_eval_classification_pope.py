"""Classification and POPE metrics against hand-computed examples and scikit-learn."""

from __future__ import annotations

import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medqwen_cli.errors import EvaluationError
from medqwen_cli.evaluation import score_task


def test_accuracy_and_macro_f1_by_hand():
    refs, preds = ["a", "a", "b", "c"], ["a", "b", "b", "c"]
    scores = score_task("classification", preds, refs)
    assert scores["accuracy"] == 0.75
    # per class F1: a 2/3 (tp 1, fn 1), b 2/3 (tp 1, fp 1), c 1 -> macro 7/9
    assert scores["macro_f1"] == pytest.approx(7 / 9)
    assert scores["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert "auc" not in scores


def test_labels_are_case_insensitive_and_invalid_predictions_are_wrong():
    scores = score_task(
        "classification",
        ["Pneumonia ", "banana"],
        ["pneumonia", "normal"],
        labels=["Normal", "Pneumonia"],
    )
    assert scores["accuracy"] == 0.5
    assert scores["n_invalid"] == 1
    # pneumonia F1 1, normal F1 0 (its item was answered with an invalid label)
    assert scores["macro_f1"] == 0.5


def test_auc_binary_by_hand():
    refs = ["a", "a", "b", "b"]
    p_b = [0.1, 0.6, 0.4, 0.8]
    scores = score_task(
        "classification",
        ["a", "b", "a", "b"],
        refs,
        labels=["a", "b"],
        scores=[[1 - s, s] for s in p_b],
    )
    # positive b scores (0.4, 0.8) beat negative (0.1, 0.6) in 3 of 4 pairs.
    assert scores["auc"] == pytest.approx(0.75)


def test_auc_matches_sklearn_one_vs_rest():
    refs = ["a", "b", "c", "a", "b", "c", "a", "c"]
    probs = [
        [0.7, 0.2, 0.1],
        [0.3, 0.4, 0.3],
        [0.2, 0.2, 0.6],
        [0.4, 0.5, 0.1],
        [0.1, 0.8, 0.1],
        [0.5, 0.1, 0.4],
        [0.6, 0.3, 0.1],
        [0.2, 0.5, 0.3],
    ]
    preds = ["abc"[max(range(3), key=row.__getitem__)] for row in probs]
    scores = score_task("classification", preds, refs, labels=["a", "b", "c"], scores=probs)
    expected = roc_auc_score(
        refs, probs, multi_class="ovr", average="macro", labels=["a", "b", "c"]
    )
    assert scores["auc"] == pytest.approx(expected)


def test_auc_none_with_reason_for_one_class():
    scores = score_task(
        "classification", ["a", "b"], ["a", "a"], labels=["a", "b"], scores=[[0.9, 0.1], [0.2, 0.8]]
    )
    assert scores["auc"] is None
    assert "only" in scores.reasons["auc"]


def test_classification_input_errors():
    with pytest.raises(EvaluationError, match="label set"):
        score_task("classification", ["a"], ["a"], scores=[[1.0]])
    with pytest.raises(EvaluationError, match="not in the label set"):
        score_task("classification", ["a"], ["z"], labels=["a", "b"])
    with pytest.raises(EvaluationError, match="rows"):
        score_task("classification", ["a"], ["a"], labels=["a", "b"], scores=[[1.0]])


def test_pope_by_hand():
    preds = ["yes", "Yes, there is a dog.", "no", "there is no cat", "normal", "yes"]
    refs = ["yes", "yes", "yes", "no", "no", "no"]
    scores = score_task("pope", preds, refs)
    # polarity: yes, yes, no, no, (unparseable), yes -> TP 2, FN 1, TN 1, FP 1, 1 unparseable
    assert scores["accuracy"] == pytest.approx(3 / 6)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["yes_ratio"] == pytest.approx(3 / 6)
    assert scores["n_unparseable"] == 1
    assert scores.headline == "f1"


def test_pope_undefined_precision_and_bad_reference():
    scores = score_task("pope", ["no", "no"], ["yes", "no"])
    assert scores["precision"] is None and "precision" in scores.reasons
    assert scores["recall"] == 0.0 and scores["f1"] == 0.0
    with pytest.raises(EvaluationError, match="expected yes or no"):
        score_task("pope", ["yes"], ["cat"])

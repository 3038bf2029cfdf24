"""From predictions to task scores: per-type metrics, prefixes, the one headline per task."""

from __future__ import annotations

import pytest

from medqwen_cli.data.records import Record
from medqwen_cli.evaluation.runner import Prediction, _chunks, candidates_for
from medqwen_cli.evaluation.summary import HEADLINE_MEAN, score_task_predictions


def rec(i: int, kind: str, answer: str, labels: list[str] | None = None) -> Record:
    return Record(
        id=f"r{i}", type=kind, question="q?", answer=answer, labels=labels, task="t",
        source="mem", line=i,
    )  # fmt: skip


def pred(r: Record, text: str, probs: list[float] | None = None) -> Prediction:
    return Prediction(
        id=r.id, task="t", type=r.type, prediction=text, reference=r.answer,
        method="likelihood" if probs else "generate",
        candidates=list(r.labels) if probs else None, probabilities=probs,
    )  # fmt: skip


LABELS = ["normal", "nodule", "effusion"]


def test_single_type_keeps_metric_names_and_headline() -> None:
    records = [rec(i, "classification", a, LABELS) for i, a in enumerate(["normal", "nodule"])]
    preds = [
        pred(records[0], "normal", [0.8, 0.1, 0.1]),
        pred(records[1], "normal", [0.6, 0.3, 0.1]),
    ]
    task = score_task_predictions("t", records, preds, split="eval")
    assert task.headline_metric == "accuracy" and task.headline == 0.5 and not task.mixed
    rows = {r["metric"]: r for r in task.metric_rows()}
    assert rows["accuracy"]["headline"] and not rows["macro_f1"]["headline"]
    assert rows["auc"]["value"] == 1.0  # nodule's score ranks the nodule case first
    assert "n" not in rows and all(r["n"] == 2 for r in rows.values())


def test_answer_nll_is_the_mean_negative_log_probability_of_the_reference() -> None:
    import math

    records = [rec(i, "classification", a, LABELS) for i, a in enumerate(["normal", "nodule"])]
    preds = [
        pred(records[0], "normal", [0.8, 0.1, 0.1]),
        pred(records[1], "normal", [0.6, 0.3, 0.1]),
    ]
    task = score_task_predictions("t", records, preds, split="eval")
    rows = {r["metric"]: r for r in task.metric_rows()}
    expected = (-math.log(0.8) - math.log(0.3)) / 2
    assert rows["answer_nll"]["value"] == pytest.approx(expected)
    assert not rows["answer_nll"]["headline"]
    # generated answers have no candidate distribution: no NLL row, never a made-up 0
    generated = [pred(r, "normal") for r in records]
    rows = {
        r["metric"]
        for r in score_task_predictions("t", records, generated, split="eval").metric_rows()
    }
    assert "answer_nll" not in rows


def test_mixed_types_are_prefixed_with_an_unweighted_mean_headline() -> None:
    records = [
        rec(0, "vqa_closed", "yes", ["yes", "no"]),
        rec(1, "vqa_closed", "no", ["yes", "no"]),
        rec(2, "vqa_closed", "no", ["yes", "no"]),
        rec(3, "vqa_open", "left lung"),
    ]
    preds = [pred(records[0], "yes"), pred(records[1], "yes"), pred(records[2], "no"),
             pred(records[3], "left lung")]  # fmt: skip
    task = score_task_predictions("t", records, preds, split="eval")
    assert task.mixed and task.headline_metric == HEADLINE_MEAN
    assert task.headline == pytest.approx((2 / 3 + 1.0) / 2)  # not (2 + 1) / 4
    rows = {r["metric"]: r for r in task.metric_rows()}
    assert rows[HEADLINE_MEAN]["headline"] and rows[HEADLINE_MEAN]["n"] == 4
    assert rows["vqa_closed.accuracy"]["n"] == 3 and not rows["vqa_closed.accuracy"]["headline"]
    assert rows["vqa_open.token_f1"]["type"] == "vqa_open"


def test_undefined_part_makes_the_headline_missing_not_zero() -> None:
    records = [rec(0, "pope", "no", ["yes", "no"]), rec(1, "vqa_open", "small")]
    preds = [pred(records[0], "no"), pred(records[1], "small")]
    task = score_task_predictions("t", records, preds, split="eval")
    assert task.headline is None and "pope.f1" in task.headline_reason


def test_candidates_by_type_and_scoring() -> None:
    assert candidates_for(rec(0, "pope", "yes", ["yes", "no"]), "likelihood") == ["yes", "no"]
    assert candidates_for(rec(0, "classification", "nodule", LABELS), "likelihood") == LABELS
    assert candidates_for(rec(0, "vqa_closed", "left", ["left", "right"]), "likelihood") == [
        "left",
        "right",
    ]
    assert candidates_for(rec(0, "vqa_closed", "left lung"), "likelihood") is None
    assert candidates_for(rec(0, "vqa_open", "left lung"), "likelihood") is None
    assert candidates_for(rec(0, "pope", "yes", ["yes", "no"]), "generate") is None


def test_likelihood_batches_bound_samples_and_candidate_rows() -> None:
    assert _chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    # at most 64 candidate rows per forward; a record with more still goes alone
    assert _chunks(list(range(5)), 8, [30, 30, 30, 100, 2]) == [[0, 1], [2], [3], [4]]


def test_stratified_head_covers_every_group_in_file_order() -> None:
    from types import SimpleNamespace

    from medqwen_cli.evaluation.api import stratified_head

    def rec(kind: str, answer: str = "x") -> SimpleNamespace:
        return SimpleNamespace(type=kind, answer=answer)

    items = [(0, rec("report"))] * 6 + [(0, rec("pope", "no"))] * 3 + [(0, rec("pope", "yes"))] * 3
    items += [(1, rec("vqa_closed"))] * 4
    picked = stratified_head(items, 8)
    assert len(picked) == 8
    kinds = [(d, r.type, r.answer) for d, r in picked]
    assert {
        (0, "pope", "yes"),
        (0, "pope", "no"),
        (0, "report", "x"),
        (1, "vqa_closed", "x"),
    } <= set(kinds)
    positions = [items.index(p) for p in picked]
    assert positions == sorted(positions)
    assert stratified_head(items, 100) == items

"""Closed and open VQA metrics against hand-computed examples."""

from __future__ import annotations

import pytest

from medqwen_cli.evaluation import score_task
from medqwen_cli.evaluation.metrics._text import match_choice, normalize, polarity


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("yes", True),
        ("Yes, there is.", True),
        ("present", True),
        ("Positive", True),
        ("There is a nodule in the left lung.", True),
        ("no", False),
        ("No.", False),
        ("absent", False),
        ("negative", False),
        ("There is no effusion", False),
        ("It isn't present", False),
        ("Not visible", False),
        ("normal", None),  # "no" must not match inside "normal"
        ("nodule", None),  # ... nor inside "nodule"
        ("unknown", None),
        ("", None),
        (None, None),
    ],
)
def test_polarity(answer, expected):
    assert polarity(answer) is expected


def test_normalize_strips_case_punctuation_and_articles():
    assert normalize("  The LEFT-lung, an opacity! ") == "left lung opacity"


def test_no_never_matches_normal_or_nodule():
    scores = score_task("vqa_closed", ["normal", "nodule", "no"], ["no", "no", "no"])
    # "normal" and "nodule" say neither yes nor no: unparseable, counted wrong, not dropped.
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["n"] == 3
    assert scores["n_unparseable"] == 2


def test_yes_no_synonyms():
    preds = ["yes, there is", "present", "positive", "no", "absent", "negative"]
    refs = ["yes", "yes", "yes", "no", "no", "no"]
    assert score_task("vqa_closed", preds, refs)["accuracy"] == 1.0
    flipped = score_task("vqa_closed", preds, list(reversed(refs)))
    assert flipped["accuracy"] == 0.0 and flipped["n_unparseable"] == 0


def test_choice_questions_match_candidates():
    preds = ["The left lung.", "right", "left and right", "", "CT"]
    refs = ["left", "left", "left", "left", "MRI"]
    choices = [["left", "right"]] * 4 + [["CT", "MRI"]]
    scores = score_task("vqa_closed", preds, refs, choices=choices)
    # correct: 1 (left); wrong: right, CT; unparseable: "left and right" (two), "" (none)
    assert scores["accuracy"] == pytest.approx(1 / 5)
    assert scores["n_unparseable"] == 2


def test_match_choice_prefers_the_longer_candidate():
    choices = ["lung", "left lung", "right lung"]
    assert match_choice("in the left lung", choices) == "left lung"
    assert match_choice("nodule", ["nodule", "normal"]) == "nodule"
    assert match_choice("normal", ["no", "yes"]) is None


def test_closed_without_candidates_uses_phrase_match():
    preds = ["This is a CT scan.", "MRI", ""]
    refs = ["CT", "CT", "CT"]
    scores = score_task("vqa_closed", preds, refs)
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["n_unparseable"] == 1


def test_open_vqa_token_scores():
    preds = ["small left pleural effusion", "The heart."]
    refs = ["left effusion", "heart"]
    scores = score_task("vqa_open", preds, refs)
    # item 1: common 2, precision 2/4, recall 2/2, F1 = 2*0.5*1/1.5 = 2/3; item 2 exact.
    assert scores["token_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["token_recall"] == pytest.approx(1.0)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores.headline == "token_f1"


def test_open_vqa_counts_repeats_and_empty_answers():
    scores = score_task("vqa_open", ["effusion effusion", None], ["effusion", "edema"])
    # item 1: common 1, precision 1/2, recall 1, F1 2/3; item 2: empty answer scores 0.
    assert scores["token_f1"] == pytest.approx(1 / 3)
    assert scores["token_recall"] == pytest.approx(0.5)
    assert scores["exact_match"] == 0.0

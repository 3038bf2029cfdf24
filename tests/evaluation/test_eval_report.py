"""Report metrics: BLEU / ROUGE-L equal their backends, CIDEr-D and finding F1 by hand."""

from __future__ import annotations

import math

import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from medqwen_cli.errors import EvaluationError
from medqwen_cli.evaluation import score_task
from medqwen_cli.evaluation.metrics.cider import cider_d_scores
from medqwen_cli.evaluation.metrics.report import positive_findings

PREDS = [
    "The heart is normal in size. No pleural effusion.",
    "Small left pleural effusion with basal atelectasis.",
    "No acute cardiopulmonary abnormality.",
]
REFS = [
    "Heart size is normal. There is no pleural effusion or pneumothorax.",
    "Small left effusion. Left basal atelectasis.",
    "No acute cardiopulmonary process.",
]


def test_bleu_and_rouge_equal_the_backends():
    scores = score_task("report", PREDS, REFS)
    for n in (1, 2, 3, 4):
        expected = BLEU(max_ngram_order=n, lowercase=True).corpus_score(PREDS, [REFS]).score
        assert scores[f"bleu_{n}"] == pytest.approx(expected / 100, abs=1e-12)
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    expected = (
        sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS, strict=True)) / 3
    )
    assert scores["rouge_l"] == pytest.approx(expected, abs=1e-12)
    assert scores.headline == "rouge_l"


def test_bleu_and_rouge_with_several_references():
    refs = [[REFS[0], "Normal heart size."], [REFS[1]], [REFS[2], "No acute process.", "Clear."]]
    scores = score_task("report", PREDS, refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(3)]
    bleu = BLEU(max_ngram_order=4, lowercase=True).corpus_score(PREDS, streams).score
    assert scores["bleu_4"] == pytest.approx(bleu / 100, abs=1e-12)
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    rouge = (
        sum(scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, refs, strict=True))
        / 3
    )
    assert scores["rouge_l"] == pytest.approx(rouge, abs=1e-12)


def test_bleu_1_and_rouge_l_by_hand():
    scores = score_task("report", ["small left effusion"], ["small left pleural effusion"])
    # unigram precision 3/3, brevity penalty exp(1 - 4/3)
    assert scores["bleu_1"] == pytest.approx(math.exp(-1 / 3), abs=1e-9)
    # LCS 3 of 3 and 4 words: P = 1, R = 3/4, F = 2 * 0.75 / 1.75
    assert scores["rouge_l"] == pytest.approx(1.5 / 1.75)
    # stemming: "effusions" matches "effusion"
    assert score_task("report", ["small effusions"], ["small effusion"])["rouge_l"] == 1.0


def test_cider_identical_two_word_captions():
    # df(effusion) = 2 = N -> idf 0; "left", "no" and the bigrams have idf log 2.
    # Each item: sim_1 = sim_2 = 1, no 3- or 4-grams -> 10 * (1 + 1 + 0 + 0) / 4 = 5.
    scores = cider_d_scores(["left effusion", "no effusion"], [["left effusion"], ["no effusion"]])
    assert scores == pytest.approx([5.0, 5.0])


def test_cider_partial_match_and_length_penalty():
    preds = ["left effusion", "no acute findings"]
    refs = [["small left effusion"], ["no acute findings"]]
    # Every n-gram has df 1, so idf = log 2 = L for all of them.
    # Item 1: unigrams hyp (L, L), ref (L, L, L): sim_1 = 2L^2 / (L*sqrt2 * L*sqrt3) = 2/sqrt6;
    #         bigrams hyp {left effusion}, ref {small left, left effusion}: sim_2 = 1/sqrt2;
    #         no trigram in the hypothesis: sim_3 = sim_4 = 0; length 2 vs 3: exp(-1/72).
    first = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    # Item 2: identical 3-word captions: sim_1 = sim_2 = sim_3 = 1, sim_4 = 0 -> 7.5.
    assert cider_d_scores(preds, refs) == pytest.approx([first, 7.5])
    corpus = score_task("report", preds, [r[0] for r in refs])["cider"]
    assert corpus == pytest.approx((first + 7.5) / 2)


def test_cider_clips_repeated_ngrams():
    preds = ["effusion effusion", "normal heart"]
    refs = [["effusion"], ["normal heart"]]
    # Item 1: hyp {effusion: 2L}, ref {effusion: L}: clipped min(2L, L) * L / (2L * L) = 0.5
    # (plain cosine would give 1); the hypothesis bigram is not in the reference: 0.
    first = 10 * math.exp(-1 / 72) * 0.5 / 4
    assert cider_d_scores(preds, refs) == pytest.approx([first, 5.0])


def test_cider_properties():
    # One item: log N = 0, every idf is <= 0 -> 0 (as in the reference code).
    assert cider_d_scores(["left effusion"], [["left effusion"]]) == [0.0]
    # A repeated reference leaves df (counted per item) and the mean over references unchanged.
    preds = ["left effusion", "no acute findings"]
    once = cider_d_scores(preds, [["small left effusion"], ["no acute findings"]])
    twice = cider_d_scores(preds, [["small left effusion"] * 2, ["no acute findings"]])
    assert twice == pytest.approx(once)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No effusion or pneumothorax.", set()),
        ("Small effusion without pneumothorax", {"effusion"}),
        ("No focal consolidation, pleural effusion or pneumothorax.", set()),
        ("Effusion is absent, but pneumothorax is present.", {"pneumothorax"}),
        ("Pleural effusion is not seen. Cardiomegaly.", {"cardiomegaly"}),
        ("Negative for pneumothorax; stable cardiomegaly.", {"cardiomegaly"}),
    ],
)
def test_positive_findings_are_negation_aware(text, expected):
    findings = ["effusion", "pneumothorax", "cardiomegaly", "consolidation"]
    assert positive_findings(text, findings) == expected


def test_finding_f1_by_hand():
    preds = ["No effusion. Small pneumothorax.", "Cardiomegaly without effusion.", "Normal."]
    refs = ["Small pneumothorax, no effusion.", "Cardiomegaly and effusion.", "No cardiomegaly."]
    scores = score_task(
        "report", preds, refs, findings=["effusion", "pneumothorax", "cardiomegaly"]
    )
    # pred sets {pneumothorax}, {cardiomegaly}, {}; ref sets {pneumothorax},
    # {cardiomegaly, effusion}, {} -> TP 2, FP 0, FN 1.
    assert scores["finding_precision"] == 1.0
    assert scores["finding_recall"] == pytest.approx(2 / 3)
    assert scores["finding_f1"] == pytest.approx(4 / 5)


def test_finding_f1_undefined_without_positives():
    scores = score_task("report", ["Normal."], ["No effusion."], findings=["effusion"])
    assert scores["finding_f1"] is None
    assert "no listed finding" in scores.reasons["finding_f1"]
    with pytest.raises(EvaluationError):
        score_task("report", ["x"], ["y"], findings=[])

"""Closed and open VQA metrics.

Closed VQA, per item (answers normalised as in `_text`):
- a yes/no item (reference "yes"/"no"/"present"/"absent"/...): the prediction's polarity must
  equal the reference's; a prediction with no polarity is unparseable;
- a choice item (candidates given): the prediction must name exactly one candidate, which must
  equal the reference; naming none or several is unparseable;
- any other item: correct when the normalised reference equals the prediction or occurs in it
  as a whole phrase; an empty prediction is unparseable.
Unparseable answers count as wrong and are never dropped: accuracy = correct / n.

Open VQA, per item, on normalised tokens with multiplicity (SQuAD style):
common = |C(pred) & C(ref)|, recall = common / |ref|, precision = common / |pred|,
F1 = 2PR / (P + R), exact match = (pred == ref); means over items. Both empty counts as a match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from medqwen_cli.evaluation.metrics._base import InMemoryMetric, metric_info, string_features
from medqwen_cli.evaluation.metrics._text import (
    contains,
    match_choice,
    normalize,
    polarity,
    reference_polarity,
    tokens,
)


def judge_closed(
    prediction: str | None, reference: str, choices: Sequence[str] | None = None
) -> bool | None:
    """True / False for a correct / wrong answer, None when the answer cannot be parsed."""
    ref_polarity = reference_polarity(reference)
    if ref_polarity is not None:
        pred_polarity = polarity(prediction)
        return None if pred_polarity is None else pred_polarity == ref_polarity
    if choices:
        chosen = match_choice(prediction, choices)
        return None if chosen is None else normalize(chosen) == normalize(reference)
    words = tokens(prediction)
    if not words:
        return None
    return contains(words, tokens(reference))


class ClosedVqaAccuracy(InMemoryMetric):
    """Closed-question accuracy; `choices` (per item candidates or None) is optional."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features())

    def _compute(self, predictions, references, choices=None):
        choices = choices or [None] * len(predictions)
        verdicts = [
            judge_closed(p, r, c) for p, r, c in zip(predictions, references, choices, strict=True)
        ]
        return {
            "accuracy": sum(v is True for v in verdicts) / len(verdicts),
            "n": len(verdicts),
            "n_unparseable": sum(v is None for v in verdicts),
        }


def token_overlap(prediction: str | None, reference: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of normalised tokens, counted with multiplicity."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0, 1.0, 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(pred), common / len(ref)
    return precision, recall, 2 * precision * recall / (precision + recall)


class OpenVqaOverlap(InMemoryMetric):
    """Open-question token recall, token F1 and exact match."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features())

    def _compute(self, predictions, references):
        scores = [token_overlap(p, r) for p, r in zip(predictions, references, strict=True)]
        n = len(scores)
        return {
            "token_f1": sum(s[2] for s in scores) / n,
            "token_recall": sum(s[1] for s in scores) / n,
            "exact_match": sum(
                normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)
            )
            / n,
            "n": n,
        }

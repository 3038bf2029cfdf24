"""POPE (object-hallucination probes): accuracy, precision, recall, F1, yes-ratio.

"yes" is the positive class. Answers are parsed for yes/no polarity as in `_text`
("yes, there is" -> yes; "there is no cat" -> no; "normal" -> unparseable). An unparseable
answer is wrong: it is never a true positive or true negative, and it counts against recall
when the reference is yes. accuracy = (TP + TN) / n, precision = TP / (TP + FP),
recall = TP / (number of yes references), F1 = 2PR / (P + R), yes-ratio = (yes answers) / n.
"""

from __future__ import annotations

from medqwen_cli.evaluation.metrics._base import InMemoryMetric, metric_info, string_features
from medqwen_cli.evaluation.metrics._text import polarity, reference_polarity


class PopeScores(InMemoryMetric):
    """POPE accuracy, precision, recall, F1 and yes-ratio (yes = positive)."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features())

    def _compute(self, predictions, references):
        preds = [polarity(p) for p in predictions]
        refs = [reference_polarity(r) for r in references]
        tp = sum(p is True and r is True for p, r in zip(preds, refs, strict=True))
        tn = sum(p is False and r is False for p, r in zip(preds, refs, strict=True))
        fp = sum(p is True and r is False for p, r in zip(preds, refs, strict=True))
        n_yes_ref = sum(r is True for r in refs)
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / n_yes_ref if n_yes_ref else None
        f1 = 2 * tp / (tp + fp + n_yes_ref) if tp + fp + n_yes_ref else None
        return {
            "accuracy": (tp + tn) / len(refs),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": sum(p is True for p in preds) / len(preds),
            "n": len(preds),
            "n_unparseable": sum(p is None for p in preds),
        }

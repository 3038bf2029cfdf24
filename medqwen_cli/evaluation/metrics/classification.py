"""Classification metrics: accuracy, macro-F1 and one-vs-rest AUC.

Labels are compared as trimmed, case-folded strings. With a label set (`labels`), a prediction
outside it is invalid: it counts as wrong (and as a miss for its reference's class in F1), and
`n_invalid` reports how many. Macro-F1 is scikit-learn's over the classes that occur in the
references or the (valid) predictions, with 0 for a class never predicted.

AUC needs per-class scores (`scores[i][k]`: item i, class `labels[k]`, e.g. the likelihoods
from scoring every label): for every class present in the references, the binary AUC of
"is this class" against that class's score; AUC is their unweighted mean (scikit-learn's
`multi_class="ovr"`, `average="macro"` when every class is present). With one class in the
references AUC is undefined: None, with the reason in `auc_reason`.
"""

from __future__ import annotations

from medqwen_cli.evaluation.metrics._base import (
    InMemoryMetric,
    backend,
    metric_info,
    string_features,
)


def _key(label: object) -> str:
    return str(label).strip().casefold()


def one_vs_rest_auc(
    references: list[str], scores: list[list[float]], labels: list[str]
) -> tuple[float | None, str | None]:
    """(macro one-vs-rest AUC, None) or (None, reason) when it is undefined."""
    roc_auc_score = backend("sklearn.metrics").roc_auc_score
    present = [k for k, label in enumerate(labels) if label in set(references)]
    if len(present) < 2:
        return (
            None,
            f"AUC needs two classes in the references; found only {sorted(set(references))}",
        )
    aucs = [
        roc_auc_score([r == labels[k] for r in references], [row[k] for row in scores])
        for k in present
    ]
    return float(sum(aucs) / len(aucs)), None


class ClassificationScores(InMemoryMetric):
    """Accuracy, macro-F1, and (given `labels` and `scores`) one-vs-rest AUC."""

    def _info(self):
        return metric_info(type(self).__doc__, string_features())

    def _compute(self, predictions, references, labels=None, scores=None):
        f1_score = backend("sklearn.metrics").f1_score
        preds = [_key(p) for p in predictions]
        refs = [_key(r) for r in references]
        label_set = [_key(label) for label in labels] if labels is not None else None
        valid = preds if label_set is None else [p if p in label_set else None for p in preds]
        classes = sorted({*refs, *(p for p in valid if p is not None)})
        result = {
            "accuracy": sum(p == r for p, r in zip(valid, refs, strict=True)) / len(refs),
            "macro_f1": float(
                f1_score(
                    refs,
                    [p if p is not None else "\0invalid" for p in valid],
                    labels=classes,
                    average="macro",
                    zero_division=0,
                )
            ),
            "n": len(refs),
        }
        if label_set is not None:
            result["n_invalid"] = sum(p is None for p in valid)
        if scores is not None:
            result["auc"], result["auc_reason"] = one_vs_rest_auc(refs, scores, label_set)
        return result

"""`score_task`: the one entry point the evaluation runners call, per task type.

    task type       options                 keys of the result
    vqa_closed      choices                 accuracy, n, n_unparseable
    vqa_open        -                       token_f1, token_recall, exact_match, n
    report          findings                bleu_1 .. bleu_4, rouge_l, cider, n
                                            (+ finding_f1, finding_precision, finding_recall)
    classification  labels, scores          accuracy, macro_f1, n (+ n_invalid, auc)
    pope            -                       accuracy, precision, recall, f1, yes_ratio, n,
                                            n_unparseable

Report references may be one text or a list of texts per item (BLEU, ROUGE-L and CIDEr-D use
them all; finding F1 uses the first). A value that cannot be computed is None, never 0, and
`TaskScores.reasons[name]` says why. Inputs are checked first; bad input raises
`EvaluationError` naming the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medqwen_cli.errors import EvaluationError
from medqwen_cli.evaluation.tasks import check_task_type, headline_metric

_OPTIONS = {
    "vqa_closed": {"choices"},
    "vqa_open": set(),
    "report": {"findings"},
    "classification": {"labels", "scores"},
    "pope": set(),
}

_WHY_NONE = {
    "precision": "no prediction is positive ('yes'), so precision is undefined",
    "recall": "no reference is positive ('yes'), so recall is undefined",
    "f1": "no prediction or reference is positive ('yes'), so F1 is undefined",
    "finding_f1": "no listed finding is asserted in any prediction or reference",
    "finding_precision": "no prediction asserts a listed finding",
    "finding_recall": "no reference asserts a listed finding",
}


class TaskScores(dict):
    """Metric name -> value (float, int count, or None when undefined), plus why and which counts.

    A plain dict for the runners (`json.dumps(scores)` works); `reasons[name]` explains each None
    and `headline` names the task's headline metric.
    """

    def __init__(
        self, values: dict[str, float | int | None], reasons: dict[str, str], headline: str
    ):
        super().__init__(values)
        self.reasons = reasons
        self.headline = headline

    @property
    def headline_value(self) -> float | None:
        return self[self.headline]


def score_task(
    task_type: str,
    predictions: Sequence[Any],
    references: Sequence[Any],
    **kw: Any,
) -> TaskScores:
    """Score one task's predictions against its references (see the module docstring)."""
    check_task_type(task_type)
    unknown = set(kw) - _OPTIONS[task_type]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[task_type])) or "none"
        raise EvaluationError(
            f"score_task({task_type!r}) got unexpected option(s) {sorted(unknown)}",
            hint=f"options for {task_type}: {allowed}",
        )
    predictions, references = list(predictions), list(references)
    if not references:
        raise EvaluationError(f"no {task_type} items to score", hint="check the evaluation split")
    if len(predictions) != len(references):
        raise EvaluationError(
            f"{len(predictions)} predictions for {len(references)} references ({task_type})",
            hint="pass exactly one prediction per reference, in the same order",
        )
    values = _SCORERS[task_type](predictions, references, **kw)
    reasons = {k[: -len("_reason")]: v for k, v in values.items() if k.endswith("_reason") and v}
    values = {k: v for k, v in values.items() if not k.endswith("_reason")}
    for name, value in values.items():
        if value is None and name not in reasons:
            reasons[name] = _WHY_NONE.get(name, "undefined for these items")
    return TaskScores(values, reasons, headline_metric(task_type))


def _texts(values: list[Any], what: str) -> list[str]:
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, str):
            raise EvaluationError(
                f"{what} {i} is a {type(v).__name__}, expected text: {v!r}",
                hint="pass the decoded answer strings",
            )
    return ["" if v is None else v for v in values]


def _reference_lists(references: list[Any]) -> list[str | list[str]]:
    out: list[str | list[str]] = []
    for i, ref in enumerate(references):
        if isinstance(ref, str):
            out.append(ref)
        elif isinstance(ref, Sequence) and ref and all(isinstance(r, str) for r in ref):
            out.append(list(ref))
        else:
            raise EvaluationError(
                f"reference {i} must be a report or a non-empty list of reports, found {ref!r}",
                hint="give one or more reference reports per item",
            )
    return out


def _score_closed(preds, refs, choices=None):
    from medqwen_cli.evaluation.metrics import ClosedVqaAccuracy

    if choices is not None:
        choices = list(choices)
        if len(choices) != len(refs):
            raise EvaluationError(
                f"{len(choices)} choice lists for {len(refs)} questions",
                hint="pass one candidate list (or None) per question",
            )
        choices = [list(c) if c else None for c in choices]
    return ClosedVqaAccuracy().compute(
        predictions=_texts(preds, "prediction"),
        references=_texts(refs, "reference"),
        choices=choices,
    )


def _score_open(preds, refs):
    from medqwen_cli.evaluation.metrics import OpenVqaOverlap

    return OpenVqaOverlap().compute(
        predictions=_texts(preds, "prediction"), references=_texts(refs, "reference")
    )


def _score_report(preds, refs, findings=None):
    from medqwen_cli.evaluation.metrics import CiderD, FindingF1, ReportBleu, ReportRougeL

    preds, refs = _texts(preds, "prediction"), _reference_lists(refs)
    # evaluate's features take all strings or all lists: give lists when any item has several
    if any(isinstance(r, list) for r in refs):
        refs = [[r] if isinstance(r, str) else r for r in refs]
    values: dict[str, Any] = {}
    for metric in (ReportBleu(), ReportRougeL(), CiderD()):
        values.update(metric.compute(predictions=preds, references=refs))
    if findings is not None:
        findings = list(findings)
        if not findings or not all(isinstance(f, str) and f.strip() for f in findings):
            raise EvaluationError(
                f"findings must be a non-empty list of keywords, found {findings!r}",
                hint='e.g. findings=["effusion", "pneumothorax", "cardiomegaly"]',
            )
        first_refs = [r if isinstance(r, str) else r[0] for r in refs]
        values.update(
            FindingF1().compute(predictions=preds, references=first_refs, findings=findings)
        )
    values["n"] = len(preds)
    return values


def _score_classification(preds, refs, labels=None, scores=None):
    from medqwen_cli.evaluation.metrics import ClassificationScores

    preds, refs = [str(p) for p in preds], [str(r) for r in refs]
    if labels is not None:
        labels = [str(label) for label in labels]
        keys = {label.strip().casefold() for label in labels}
        bad = [i for i, r in enumerate(refs) if r.strip().casefold() not in keys]
        if bad:
            raise EvaluationError(
                f"reference {bad[0]} ({refs[bad[0]]!r}) is not in the label set {labels}",
                hint="add the label to the task's label set or fix the reference",
            )
    if scores is not None:
        if labels is None:
            raise EvaluationError(
                "per-class scores were given without the label set",
                hint="pass labels=[...] in the column order of scores",
            )
        scores = [[float(s) for s in row] for row in scores]
        if len(scores) != len(refs) or any(len(row) != len(labels) for row in scores):
            raise EvaluationError(
                f"scores must be {len(refs)} rows of {len(labels)} class scores",
                hint="one row per item, one column per label, in the order of labels",
            )
    return ClassificationScores().compute(
        predictions=preds, references=refs, labels=labels, scores=scores
    )


def _score_pope(preds, refs):
    from medqwen_cli.evaluation.metrics import PopeScores
    from medqwen_cli.evaluation.metrics._text import reference_polarity

    refs = _texts(refs, "reference")
    bad = [i for i, r in enumerate(refs) if reference_polarity(r) is None]
    if bad:
        raise EvaluationError(
            f"POPE reference {bad[0]} is {refs[bad[0]]!r}, expected yes or no",
            hint="POPE probes are yes/no questions; check the task type",
        )
    return PopeScores().compute(predictions=_texts(preds, "prediction"), references=refs)


_SCORERS = {
    "vqa_closed": _score_closed,
    "vqa_open": _score_open,
    "report": _score_report,
    "classification": _score_classification,
    "pope": _score_pope,
}

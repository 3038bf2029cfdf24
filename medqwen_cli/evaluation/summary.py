"""From per-record predictions to one task's scores and its `evals.jsonl` lines.

A task may mix record types (the built-in tasks ask closed and open questions, reports,
classifications and POPE probes). Each type present is scored on its own records with its own
metrics (`score_task`). When one type is present, its metrics keep their names and its headline
metric is the task's headline. When several are present, every metric is prefixed by its type
(`pope.f1`, `report.rouge_l`) and the task's headline is

    headline_mean = unweighted mean over the types present of each type's headline metric
                    (vqa_closed accuracy, vqa_open token_f1, report rouge_l,
                     classification accuracy, pope f1; all in [0, 1])

Unweighted, so a type with few records weighs as much as a frequent one and the number does not
drift with the mix of the first N records. It is None (with the reason) when any type's
headline is undefined: a missing part is never read as 0.

Types answered by likelihood (closed VQA, POPE, classification) also get `answer_nll`, the mean
of -log p(reference | candidates) over their records (see `answer_nll`; lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medqwen_cli.data.records import Record
from medqwen_cli.evaluation.metrics._text import match_choice
from medqwen_cli.evaluation.outcomes import pack, record_outcomes, records_digest
from medqwen_cli.evaluation.runner import Prediction
from medqwen_cli.evaluation.scoring import TaskScores, score_task
from medqwen_cli.evaluation.tasks import TASK_TYPES, headline_metric

HEADLINE_MEAN = "headline_mean"
HEADLINE_MEAN_DEF = (
    "headline_mean = unweighted mean over the task's record types of each type's headline metric"
)


@dataclass
class TaskEvaluation:
    """Scores of one task: per type, plus the one headline that fills the accuracy matrix."""

    task: str
    split: str
    n: int
    by_type: dict[str, TaskScores]
    headline_metric: str
    headline: float | None
    headline_reason: str | None = None
    datasets: list[str] = field(default_factory=list)
    # share metric (its row's name) -> {"records": digest, "outcomes": bitmap} (outcomes.py)
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def mixed(self) -> bool:
        return len(self.by_type) > 1

    def metric_rows(self) -> list[dict[str, Any]]:
        """(task, type, metric, value, n, headline, reason) for every metric, headline first."""
        rows = []
        if self.mixed:
            rows.append(
                {"task": self.task, "type": "mixed", "metric": HEADLINE_MEAN,
                 "value": self.headline, "n": self.n, "headline": True,
                 "reason": self.headline_reason}
            )  # fmt: skip
        for kind, scores in self.by_type.items():
            n = int(scores.get("n") or 0)
            for name, value in scores.items():
                if name == "n":
                    continue
                rows.append(
                    {"task": self.task, "type": kind,
                     "metric": f"{kind}.{name}" if self.mixed else name, "value": value, "n": n,
                     "headline": not self.mixed and name == scores.headline,
                     "reason": scores.reasons.get(name)}
                )  # fmt: skip
        return rows


def score_task_predictions(
    task: str,
    records: Sequence[Record],
    predictions: Sequence[Prediction],
    *,
    split: str,
    findings: Sequence[str] | None = None,
    datasets: Sequence[str] = (),
) -> TaskEvaluation:
    """Score one task's predictions (same order as its records) per record type."""
    by_type: dict[str, TaskScores] = {}
    kept: dict[str, dict[str, str]] = {}
    for kind in TASK_TYPES:
        pairs = [(r, p) for r, p in zip(records, predictions, strict=True) if r.type == kind]
        if pairs:
            by_type[kind] = _score_type(kind, pairs, findings)
            nll = answer_nll([p for _, p in pairs])
            if nll is not None:
                by_type[kind]["answer_nll"] = nll
            kept |= _outcomes(kind, pairs, by_type[kind])
    if len(by_type) == 1:
        ((kind, scores),) = by_type.items()
        value, reason = scores.headline_value, scores.reasons.get(scores.headline)
        metric = headline_metric(kind)
    else:
        parts = {k: s.headline_value for k, s in by_type.items()}
        undefined = [f"{k}.{by_type[k].headline}" for k, v in parts.items() if v is None]
        value = None if undefined else sum(parts.values()) / len(parts)
        reason = f"undefined part(s): {', '.join(undefined)}" if undefined else None
        metric = HEADLINE_MEAN
    return TaskEvaluation(
        task=task, split=split, n=len(records), by_type=by_type, headline_metric=metric,
        headline=value, headline_reason=reason, datasets=list(datasets),
        outcomes={(name if len(by_type) > 1 else name.split(".", 1)[1]): v
                  for name, v in kept.items()},
    )  # fmt: skip


def _outcomes(
    kind: str, pairs: list[tuple[Record, Prediction]], scores: TaskScores
) -> dict[str, dict[str, str]]:
    """`kind.metric` -> the records' digest and outcome bitmap, for each share metric whose
    per-record outcomes average to the metric's value (they always should)."""
    records = [r for r, _ in pairs]
    digest = records_digest(records)
    found = record_outcomes(kind, records, [p.prediction for _, p in pairs])
    return {
        f"{kind}.{metric}": {"records": digest, "outcomes": pack(bits)}
        for metric, bits in found.items()
        if isinstance(scores.get(metric), float | int)
        and abs(sum(bits) / len(bits) - scores[metric]) < 1e-9
    }


def answer_nll(predictions: Sequence[Prediction]) -> float | None:
    """Mean over records of -log p(reference | candidates), the model's own distribution over
    the candidate answers (likelihood scoring); None unless every record was scored that way
    with its reference among the candidates.

    Unlike accuracy it moves with the model's confidence, not only with its argmax, so it shows
    forgetting (and learning) before answers flip.
    """
    total = 0.0
    for p in predictions:
        if p.candidates is None or p.probabilities is None:
            return None
        ref = match_choice(p.reference, p.candidates)
        if ref is None:
            return None
        prob = p.probabilities[p.candidates.index(ref)]
        total += -math.log(max(prob, 1e-30))
    return total / len(predictions) if predictions else None


def _score_type(
    kind: str, pairs: list[tuple[Record, Prediction]], findings: Sequence[str] | None
) -> TaskScores:
    preds = [p.prediction for _, p in pairs]
    refs = [r.answer for r, _ in pairs]
    if kind == "vqa_closed":
        return score_task(kind, preds, refs, choices=[r.labels for r, _ in pairs])
    if kind == "report":
        return score_task(kind, preds, refs, findings=list(findings) if findings else None)
    if kind == "classification":
        label_sets = {tuple(r.labels or ()) for r, _ in pairs}
        if len(label_sets) == 1 and next(iter(label_sets)):
            labels = list(next(iter(label_sets)))
            probs = [p.probabilities for _, p in pairs]
            same_order = all(p.candidates == labels for _, p in pairs)
            scores = probs if same_order and all(x is not None for x in probs) else None
            return score_task(kind, preds, refs, labels=labels, scores=scores)
        union = list(dict.fromkeys(label for r, _ in pairs for label in r.labels or [r.answer]))
        return score_task(kind, preds, refs, labels=union)
    return score_task(kind, preds, refs)

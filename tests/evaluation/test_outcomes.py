"""Per-record outcomes: each share metric's bitmap averages to the metric, and packs losslessly."""

from __future__ import annotations

import itertools

import pytest

from medqwen_cli.data.records import Record
from medqwen_cli.evaluation.outcomes import (
    lost_and_gained,
    pack,
    record_outcomes,
    records_digest,
    unpack,
)
from medqwen_cli.evaluation.runner import Prediction
from medqwen_cli.evaluation.summary import score_task_predictions

YES_NO = ["yes", "no"]
CASES = {
    "vqa_closed": ([("yes", YES_NO), ("no", YES_NO), ("left", ["left", "right"]),
                    ("right", ["left", "right"])],
                   ["Yes.", "maybe", "left and right", None, "right", "no", "", "left"]),
    "classification": ([("normal", ["normal", "nodule"]), ("nodule", ["normal", "nodule"])],
                       ["Normal", "nodule ", "effusion", None, "nodule"]),
    "pope": ([("yes", YES_NO), ("no", YES_NO)], ["yes", "No", "unclear", None, "yes, it is"]),
    "vqa_open": ([("left lung", None), ("small", None)], ["Left  lung", "small", "", None, "lung"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(CASES))
def test_outcomes_average_to_the_metric_and_are_stored_per_row(kind: str) -> None:
    refs, answers = CASES[kind]
    pairs = list(itertools.product(refs, answers))
    records = [
        Record(id=f"r{i}", type=kind, question="q?", answer=a, labels=labels, task="t",
               source="mem", line=i)
        for i, ((a, labels), _) in enumerate(pairs)
    ]  # fmt: skip
    preds = [
        Prediction(id=r.id, task="t", type=kind, prediction=text, reference=r.answer,
                   method="generate")
        for r, (_, text) in zip(records, pairs, strict=True)
    ]  # fmt: skip
    task = score_task_predictions("t", records, preds, split="eval")
    ((metric, bits),) = record_outcomes(kind, records, [p.prediction for p in preds]).items()
    value = task.by_type[kind][metric]
    assert 0 < sum(bits) < len(bits)  # the cases mix right and wrong answers
    assert sum(bits) / len(bits) == pytest.approx(value)
    stored = task.outcomes[metric]  # one type: the row's bare metric name
    assert unpack(stored["outcomes"], len(bits)) == bits
    assert stored["records"] == records_digest(records)


def test_pack_digest_and_counts() -> None:
    for n in (1, 7, 8, 9, 100):
        bits = [(i * 7) % 3 == 0 for i in range(n)]
        assert unpack(pack(bits), n) == bits
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(pack([True] * 9), 8)
    assert lost_and_gained([True, True, False], [False, True, True]) == (1, 1)
    r = Record(id="a", type="pope", question="q?", answer="yes", labels=YES_NO, task="t",
               source="mem", line=1)  # fmt: skip
    changed = r.model_copy(update={"answer": "no"})
    assert records_digest([r]) != records_digest([changed])
    assert "yes" not in records_digest([r])  # a hex digest, no text

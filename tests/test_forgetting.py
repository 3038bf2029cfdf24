"""Forgetting figures on the worked example of docs/forgetting.md, missing cells, and the plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medqwen_cli.errors import EvaluationError
from medqwen_cli.forgetting import (
    ACC_DEF,
    BWT_DEF,
    accuracy_matrix,
    forgetting_report,
    training_curves,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "forgetting.md"
ROWS = ["base", "v1", "v2", "v3"]
TASKS = ["t1", "t2", "t3"]
LINEAGE = [("v1", "t1"), ("v2", "t2"), ("v3", ["t3"])]
# The worked example of docs/forgetting.md (checked against the doc below).
R = [
    [0.30, 0.20, 0.40],
    [0.80, 0.25, 0.45],
    [0.85, 0.90, 0.50],
    [0.60, 0.85, 0.75],
]


def records(matrix=R, metric="accuracy", skip=()):
    return [
        {"version": ROWS[i], "task": TASKS[j], "metric": metric, "value": matrix[i][j]}
        for i in range(len(ROWS))
        for j in range(len(TASKS))
        if (ROWS[i], TASKS[j]) not in skip
    ]


def test_doc_shows_the_same_matrix_and_figures():
    text = DOC.read_text()
    example = text[text.index("## Worked example") :]
    for label, row in zip(["base (b)", "v1", "v2", "v3"], R, strict=True):
        line = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", example, re.MULTILINE).group(1)
        assert [float(c.strip(" *")) for c in line.split("|")] == row
    for figure in ("ACC", "BWT", "FWT", "Forgetting"):
        assert f"**{figure}**" in example
    for value in ("**0.7333**", "**-0.125**", "**0.075**", "**0.15**"):
        assert value in example


def test_worked_example_figures():
    report = forgetting_report(records(), LINEAGE, name="sslora")
    assert report.acc.value == pytest.approx((0.60 + 0.85 + 0.75) / 3)  # 0.7333
    assert report.bwt.value == pytest.approx(((0.60 - 0.80) + (0.85 - 0.90)) / 2)  # -0.125
    assert report.fwt.value == pytest.approx(((0.25 - 0.20) + (0.50 - 0.40)) / 2)  # 0.075
    assert report.forgetting.value == pytest.approx(((0.85 - 0.60) + (0.90 - 0.85)) / 2)  # 0.15
    assert report.acc.definition == ACC_DEF and report.bwt.definition == BWT_DEF
    assert all(f.definition and f.reason is None for f in report.figures())


def test_worked_example_per_task():
    per_task = {t.task: t for t in forgetting_report(records(), LINEAGE).per_task}
    t1, t2, t3 = per_task["t1"], per_task["t2"], per_task["t3"]
    assert (t1.trained_in, t1.after_training, t1.final) == ("v1", 0.80, 0.60)
    assert t1.drop.value == pytest.approx(0.20)
    assert t1.relative_drop.value == pytest.approx(0.25)
    assert t1.forgetting.value == pytest.approx(0.25)
    assert t2.drop.value == pytest.approx(0.05)
    assert t2.relative_drop.value == pytest.approx(0.05 / 0.90)
    assert t2.forgetting.value == pytest.approx(0.05)
    assert t3.drop.value == 0.0 and t3.relative_drop.value == 0.0
    assert t3.forgetting.value is None and "last version" in t3.forgetting.reason


def test_matrix_layout():
    m = accuracy_matrix(records(), LINEAGE)
    assert m.rows == ROWS and m.tasks == TASKS
    assert m.trained_row == {"t1": 1, "t2": 2, "t3": 3}
    assert m.values == R
    assert m.metrics == {"t1": "accuracy", "t2": "accuracy", "t3": "accuracy"}


def test_missing_cell_propagates_as_missing():
    report = forgetting_report(records(skip={("v3", "t1")}), LINEAGE)
    assert report.matrix.values[3][0] is None
    for figure in (report.acc, report.bwt, report.forgetting):
        assert figure.value is None
        assert figure.reason == "missing R[v3][t1]"
    assert report.fwt.value == pytest.approx(0.075)
    per_task = {t.task: t for t in report.per_task}
    assert per_task["t1"].drop.value is None and per_task["t1"].relative_drop.value is None
    assert per_task["t2"].drop.value == pytest.approx(0.05)


def test_missing_base_row_leaves_fwt_undefined():
    report = forgetting_report(records(skip={("base", "t2")}), LINEAGE)
    assert report.fwt.value is None and report.fwt.reason == "missing R[base][t2]"
    assert report.bwt.value == pytest.approx(-0.125)


def test_non_finite_values_are_missing_and_later_records_win():
    recs = records() + [
        {"version": "v3", "task": "t3", "metric": "accuracy", "value": float("nan")},
        {"version": "v2", "task": "t2", "metric": "accuracy", "value": 0.95},
    ]
    m = accuracy_matrix(recs, LINEAGE)
    assert m.values[3][2] is None
    assert m.values[2][1] == 0.95


def test_single_version_has_no_bwt_or_fwt():
    report = forgetting_report(records(), [("v1", "t1")])
    assert report.acc.value == pytest.approx(0.80)
    assert report.bwt.value is None and "before the last version" in report.bwt.reason
    assert report.fwt.value is None and "after the first version" in report.fwt.reason
    assert report.matrix.ignored_records == 10  # all but (base, t1) and (v1, t1)


def test_version_training_two_tasks():
    # v1 trains t1 and t2 together, v2 trains t3: t(t1) = t(t2) = 1, t(t3) = 2.
    recs = records()
    report = forgetting_report(recs, [("v1", ["t1", "t2"]), ("v3", "t3")])
    # rows: base, v1, v3
    assert report.matrix.rows == ["base", "v1", "v3"]
    assert report.bwt.value == pytest.approx(((0.60 - 0.80) + (0.85 - 0.25)) / 2)
    assert report.fwt.value == pytest.approx(0.45 - 0.40)


def test_metric_selection():
    recs = records() + records(metric="token_recall")
    with pytest.raises(EvaluationError, match="several metrics"):
        accuracy_matrix(recs, LINEAGE)
    assert accuracy_matrix(recs, LINEAGE, metric="accuracy").values == R
    mapping = {"t1": "accuracy", "t2": "token_recall", "t3": "accuracy"}
    assert accuracy_matrix(recs, LINEAGE, metric=mapping).metrics == mapping
    with pytest.raises(EvaluationError, match="no metric given"):
        accuracy_matrix(recs, LINEAGE, metric={"t1": "accuracy"})


def test_bad_input():
    with pytest.raises(EvaluationError, match="lacks"):
        accuracy_matrix([{"version": "v1", "task": "t1"}], LINEAGE)
    with pytest.raises(EvaluationError, match="twice"):
        accuracy_matrix(records(), [("v1", "t1"), ("v1", "t2")])
    with pytest.raises(EvaluationError, match="no trained version"):
        accuracy_matrix(records(), [])


def test_relative_drop_undefined_after_a_zero_score():
    zero = [row[:] for row in R]
    zero[1][0] = 0.0
    t1 = forgetting_report(records(zero), LINEAGE).per_task[0]
    assert t1.drop.value == pytest.approx(-0.60)
    assert t1.relative_drop.value is None and "is 0" in t1.relative_drop.reason


def side_by_side() -> list:
    """lora (one cell missing) and sslora, as the forgetting report sets runs side by side."""
    runs = [("lora", records(skip={("v3", "t1")})), ("sslora", records())]
    return [forgetting_report(r, LINEAGE, name=name) for name, r in runs]


def test_runs_side_by_side():
    reports = side_by_side()
    assert [r.name for r in reports] == ["lora", "sslora"]
    rows = [row for r in reports for row in r.figure_rows()]
    assert {row["run"] for row in rows} == {"lora", "sslora"}
    assert all(row["definition"] for row in rows)
    json.loads(reports[0].model_dump_json())


def test_step_records_are_curves_never_cells():
    # t1 scored at steps 0, 5, 7 while v2 trained t2; step 5 twice (the later counts);
    # values far from R so a leak into the matrix would show
    steps = [(0, 0.8), (5, 0.1), (5, 0.4), (7, 0.2)]
    curve = [
        {"version": "v2", "task": "t1", "metric": "accuracy", "value": v, "headline": True,
         "step": k, "steps": 7, "eval_every": 5}
        for k, v in steps
    ]  # fmt: skip
    other = [{**r, "metric": "answer_nll", "headline": False} for r in curve]
    report = forgetting_report(records() + curve + other, LINEAGE)
    assert report.matrix.values == R and report.matrix.ignored_records == 0
    assert report.bwt.value == pytest.approx(-0.125)
    ((c),) = report.curves
    assert (c.version, c.trained, c.task, c.metric, c.eval_every, c.steps) == (
        "v2", ["t2"], "t1", "accuracy", 5, 7
    )  # fmt: skip
    assert [(p.step, p.value) for p in c.points] == [(0, 0.8), (5, 0.4), (7, 0.2)]
    assert c.definition == "score of t1 while training v2 on t2, every 5 steps"
    nll = training_curves(curve + other, LINEAGE, metric="answer_nll")
    assert [p.value for p in nll[0].points] == [0.8, 0.4, 0.2]
    assert training_curves(curve, [("v1", "t1")]) == []  # a version off the lineage: no curve


def test_plot_is_a_png_of_the_expected_size(tmp_path):
    from PIL import Image

    from medqwen_cli.plots import figure_size_px, plot_forgetting

    reports = side_by_side()
    out = plot_forgetting(reports, tmp_path / "plots" / "forgetting.png")
    assert out == tmp_path / "plots" / "forgetting.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == figure_size_px(2) == (1300, 1050)
    assert [p.name for p in out.parent.iterdir()] == ["forgetting.png"]  # no temporary left
    with pytest.raises(EvaluationError):
        plot_forgetting([], tmp_path / "empty.png")

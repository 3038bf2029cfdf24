"""Acceptance criteria: the schema, the checks (pure), and the hash-chained log."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medqwen_cli.acceptance import (
    ACCEPTANCE_FILE,
    REJECTED,
    AcceptanceConfig,
    append_line,
    judge,
    read_log,
    statuses,
)
from medqwen_cli.errors import RecipeError
from medqwen_cli.evaluation.outcomes import pack
from medqwen_cli.recipe import build_recipe

LINEAGE = [("v0002", ["xray"]), ("v0003", ["ct"])]


def _line(version, task, value, metric="headline_mean", headline=True, **extra):
    return {"version": version, "task": task, "metric": metric, "value": value,
            "headline": headline, "n": 20, **extra}  # fmt: skip


RECORDS = [
    _line("v0002", "xray", 0.80),
    _line("v0003", "xray", 0.60),
    _line("v0003", "ct", 0.70),
    _line("v0003", "ct", 0.90, metric="vqa_closed.accuracy", headline=False),
    _line("v0003", "xray", 0.10, step=3),  # a curve point: never a score of the version
]


def test_schema_is_strict_and_in_force_needs_a_criterion():
    assert not AcceptanceConfig().in_force()
    assert not AcceptanceConfig(notes=["small eval split"]).in_force()
    assert AcceptanceConfig.model_validate({"earlier_tasks": {"min_kept": 0.9}}).in_force()
    recipe = build_recipe({"acceptance": {"new_task": {"min_score": 0.5}}}, check_paths=False)
    assert recipe.acceptance.new_task.min_score == 0.5
    with pytest.raises(RecipeError, match="acceptance"):
        build_recipe({"acceptance": {"new_task": {"min_kept": 0.9}}}, check_paths=False)


def test_checks_measure_kept_drop_score_and_metric():
    criteria = AcceptanceConfig.model_validate({
        "new_task": {"min_score": 0.5, "min_metric": {"vqa_closed.accuracy": 0.95}},
        "earlier_tasks": {"min_kept": 0.95, "max_drop": 0.3},
    })  # fmt: skip
    checks = {(c.task, c.criterion): c for c in judge(criteria, RECORDS, LINEAGE)}
    kept = checks[("xray", "min_kept")]
    assert kept.measured == pytest.approx(0.75) and not kept.passed  # 0.60 / 0.80
    drop = checks[("xray", "max_drop")]
    assert drop.measured == pytest.approx(0.2) and drop.passed
    assert checks[("ct", "min_score")].passed
    metric = checks[("ct", "min_metric")]
    assert metric.measured == pytest.approx(0.9) and not metric.passed
    assert "0.75, needs >= 0.95" in kept.line()


def test_records_lost_counts_net_records_on_the_same_set():
    records = [
        _line("v0002", "xray", 0.80, metric="vqa_closed.accuracy", headline=False),
        _line("v0003", "xray", 0.65, metric="vqa_closed.accuracy", headline=False),
        _line("v0003", "ct", 0.5, metric="pope.accuracy", headline=False, n=10),
        _line("v0002", "ct", 0.5, metric="pope.accuracy", headline=False),
    ]
    criteria = AcceptanceConfig.model_validate(
        {"earlier_tasks": {"max_records_lost": {"vqa_closed.accuracy": 2}}}
    )
    (check,) = judge(criteria, records, LINEAGE)
    assert check.measured == 3 and not check.passed  # round(16) - round(13) on n = 20
    lineage = [("v0002", ["ct"]), ("v0003", ["xray"])]
    criteria = AcceptanceConfig.model_validate(
        {"earlier_tasks": {"max_records_lost": {"pope.accuracy": 5}}}
    )
    (check,) = judge(criteria, records, lineage)
    assert check.measured is None and "not the same records" in check.detail
    with pytest.raises(RecipeError, match="share of records"):
        build_recipe(
            {"acceptance": {"earlier_tasks": {"max_records_lost": {"headline_mean": 1}}}},
            check_paths=False,
        )


def test_records_lost_counts_each_record_from_its_outcomes():
    """Net 0 (one record lost, one gained) is still one record lost; a single-type task's bare
    `accuracy` is found as `vqa_closed.accuracy`; other records do not pair."""
    then, now = [True, True, False, True], [True, False, True, True]
    line = {"metric": "accuracy", "type": "vqa_closed", "headline": True, "n": 4, "records": "d1"}
    records = [
        {**line, "version": "v0002", "task": "xray", "value": 0.75, "outcomes": pack(then)},
        {**line, "version": "v0003", "task": "xray", "value": 0.75, "outcomes": pack(now)},
    ]
    criteria = AcceptanceConfig.model_validate(
        {"earlier_tasks": {"max_records_lost": {"vqa_closed.accuracy": 0}}}
    )
    (check,) = judge(criteria, records, LINEAGE)
    assert check.measured == 1 and not check.passed and "1 gained" in check.detail
    records[1] = {**records[1], "records": "d2"}
    (check,) = judge(criteria, records, LINEAGE)
    assert check.measured is None and "not the same records" in check.detail
    records[1] = {**records[1], "records": "d1", "outcomes": "ff"}  # 8 bits for 4 records: fine
    (check,) = judge(criteria, records, LINEAGE)
    assert check.measured == 0 and check.passed


def test_an_unmeasured_criterion_fails():
    criteria = AcceptanceConfig.model_validate({"tasks": {"xray": {"min_score": 0.1}}})
    (check,) = judge(criteria, [_line("v0002", "xray", 0.8)], LINEAGE)
    assert check.measured is None and not check.passed
    assert "no evaluation of xray after v0003" in check.detail


def test_log_chain_statuses_and_tampering(tmp_path):
    append_line(tmp_path, {"kind": "verdict", "version": "v0002", "passed": True}, "test")
    append_line(tmp_path, {"kind": "verdict", "version": "v0003", "passed": False}, "test")
    lines, problems = read_log(tmp_path)
    assert problems == [] and lines[0]["prev"] is None and lines[1]["prev"]
    assert statuses(lines) == {"v0002": "accepted", "v0003": REJECTED}
    append_line(tmp_path, {"kind": "override", "version": "v0003", "by": "A", "reason": "r"}, "t")
    assert statuses(read_log(tmp_path)[0])["v0003"] == "accepted by override"
    file = tmp_path / ACCEPTANCE_FILE
    texts = file.read_text().splitlines()
    first = json.loads(texts[0])
    first["passed"] = False  # an edited verdict breaks the chain at the next line
    file.write_text("\n".join([json.dumps(first, sort_keys=True), *texts[1:]]) + "\n")
    assert any(":2 does not follow" in p for p in read_log(tmp_path)[1])


def test_judge_run_skips_without_criteria():
    from medqwen_cli.acceptance import judge_run

    recipe = SimpleNamespace(acceptance=AcceptanceConfig())
    assert judge_run(recipe, None, "v0002", main=True) is None

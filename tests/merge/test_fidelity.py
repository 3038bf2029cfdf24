"""The fidelity merge reports is what an independent recomputation finds (export loaded through
plain transformers / PEFT), routed with calibration measures an unchanged task metric, and the
task metric "before" is what `medqwen evaluate` records for the version."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from medqwen_cli.merge import REPORT_FILE, merge_bundle


def _independent_fidelity(
    trained: Path, out: Path, mode: str, reference, records, batch_of, logits
) -> tuple[float, float, int]:
    """Mean relative logit error, top-1 agreement and token count, one held-out sample at a
    time, with the export loaded through plain transformers / PEFT."""
    from transformers import Qwen2VLForConditionalGeneration

    ref = reference(trained)
    if mode == "dense":
        model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    else:
        peft = pytest.importorskip("peft", reason="peft is not installed (pip install peft)")
        base = Qwen2VLForConditionalGeneration.from_pretrained(
            json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"],
            dtype=torch.float32,
        )
        model = peft.PeftModel.from_pretrained(base, out)
    model.eval()
    ids = json.loads((out / REPORT_FILE).read_text())["calibration"]["held_out_ids"]
    errors, agree = [], 0
    for record in records(ids):
        batch = batch_of(ref.processor, [record])
        z, z2 = logits(ref.model, batch)[0], logits(model, batch)[0]  # (L, V)
        for t in range(z.shape[0]):
            errors.append(float(torch.linalg.norm(z2[t] - z[t]) / torch.linalg.norm(z[t])))
            agree += int(z2[t].argmax() == z[t].argmax())
    return sum(errors) / len(errors), agree / len(errors), len(errors)


@pytest.mark.parametrize("mode", ["dense", "peft"])
def test_reported_fidelity_is_what_an_independent_recomputation_finds(
    trained: Path, tmp_path: Path, mode: str, reference, records, batch_of, logits
) -> None:
    out = tmp_path / mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = merge_bundle(trained, out, mode=mode, calibration_samples=10, evaluate=False)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    fid = result.fidelity
    assert result.calibration == {
        "tasks": ["xray"], "split": "train", "fit_samples": 8, "held_out_samples": 2,
        "requested_samples": 10,
    }  # fmt: skip
    helpers = (reference, records, batch_of, logits)
    error, agreement, tokens = _independent_fidelity(trained, out, mode, *helpers)
    assert fid.tokens == tokens
    assert fid.mean_relative_logit_error > 1e-3  # token routing is not a constant: approximate
    assert fid.mean_relative_logit_error == pytest.approx(error, rel=1e-4)
    assert abs(fid.top1_agreement - agreement) <= 1 / tokens  # at most one near-tie may flip
    if mode == "peft":
        assert "PeftModel" in fid.measured_with and result.peft_rank == 32  # 2r: lossless
    else:
        assert "Qwen2VLForConditionalGeneration" in fid.measured_with


def test_task_metric_before_and_after(trained: Path, tmp_path: Path) -> None:
    """Routed with --calibration measures too; exact, so the task metric does not move."""
    result = merge_bundle(trained, tmp_path / "r", calibration=["xray"], calibration_samples=3)
    fid = result.fidelity
    assert fid.mean_relative_logit_error == 0.0 and fid.top1_agreement == 1.0
    (row,) = fid.task_metrics
    assert row["task"] == "xray" and row["n"] == 2 and row["metric"]
    assert row["before"] == row["after"]


def test_before_is_what_evaluate_records_and_every_phase_reports(
    scored: Path, tmp_path: Path
) -> None:
    """Same records, n and scoring as `evaluate` (merge once scored the first 16 records in file
    order: no POPE "yes" probe, F1 0.0 against evaluate's 0.4, headline 0.120 against 0.217)."""
    from medqwen_cli.evaluation.api import evaluate_bundle

    evaluated = evaluate_bundle(scored, version="v0002")
    calls: list[tuple[int, int, str]] = []
    result = merge_bundle(
        scored, tmp_path / "d", mode="dense", calibration_samples=4,
        progress=lambda done, total, phase: calls.append((done, total, phase)),
    )  # fmt: skip
    (row,) = result.fidelity.task_metrics
    (task,) = evaluated.tasks
    assert (row["task"], row["metric"], row["n"], row["scoring"]) == (
        task.task, task.headline_metric, task.n, evaluated.scoring,
    )  # fmt: skip
    assert task.n == 16 and row["before"] == task.headline
    assert {part: v["before"] for part, v in row["parts"].items()} == {
        f"{kind}.{s.headline}": s.headline_value for kind, s in task.by_type.items()
    }
    phases = list(dict.fromkeys(phase for _, _, phase in calls))
    assert phases == [
        "reading calibration data (xray)", "loading v0002", "calibrating mean gates",
        "writing the dense export", "loading the export back", "measuring fidelity",
        "task metric: xray with the routed model", "task metric: xray with the export",
    ]  # fmt: skip
    starts = {phase: (done, total) for done, total, phase in reversed(calls)}  # first call each
    assert all(done == 0 for done, _ in starts.values())
    assert starts["task metric: xray with the export"] == (0, 16)

"""Runners on the tiny presets: likelihood scoring against an independent forward pass,
batched greedy generation against one sample at a time, and the predictions file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from medqwen_cli.data.collate import Collator
from medqwen_cli.data.readers import load_records
from medqwen_cli.evaluation.api import write_predictions
from medqwen_cli.evaluation.runner import Runner, candidates_for
from medqwen_cli.modeling import cache_dir, load_base
from medqwen_cli.recipe import DatasetSpec

PIXELS = 112 * 112


@pytest.fixture(scope="module", params=["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def tiny(request):
    model, processor, _ = load_base(request.param, dtype="float32", device="cpu", max_pixels=PIXELS)
    return model, processor


@pytest.fixture(scope="module")
def records():
    """The first 10 eval records of builtin:xray: every record type, 112 px images."""
    spec = DatasetSpec(path="builtin:xray")
    return load_records(spec, "eval", cache_dir=cache_dir(), max_image_pixels=PIXELS)[:10]


def reference_log_likelihood(model, processor, record, answer: str) -> float:
    """log p(answer + end-of-turn | prompt) from one full forward of the training sequence."""
    batch = Collator(processor, max_image_pixels=PIXELS)(
        [record.model_copy(update={"answer": answer})]
    )
    labels = batch.pop("labels")[0]  # (L,)
    with torch.no_grad():
        logp = model(**batch).logits[0].float().log_softmax(-1)  # (L, V)
    where = (labels != -100).nonzero()[:, 0]
    return logp[where - 1, labels[where]].sum().item()


def test_likelihood_matches_independent_forward_and_picks_the_best(tiny, records) -> None:
    model, processor = tiny
    scored = [r for r in records if candidates_for(r, "likelihood")]
    assert {r.type for r in scored} == {"vqa_closed", "classification", "pope"}
    # batch 4: prompts of different lengths are left-padded together; classification rows
    # (5 labels) share a batch with yes/no rows (2 candidates)
    predictions = Runner(model, processor, batch_size=4, max_image_pixels=PIXELS).run(scored)
    for record, pred in zip(scored, predictions, strict=True):
        expected = [reference_log_likelihood(model, processor, record, c) for c in record.labels]
        assert pred.candidates == record.labels
        assert pred.log_likelihoods == pytest.approx(expected, abs=1e-3)
        assert pred.prediction == record.labels[max(range(len(expected)), key=expected.__getitem__)]
        assert math.isclose(sum(pred.probabilities), 1.0, rel_tol=1e-6)
        assert pred.method == "likelihood" and pred.reference == record.answer


def test_batched_left_padded_generation_equals_one_at_a_time(tiny, records) -> None:
    model, processor = tiny
    runner = Runner(model, processor, batch_size=8, max_new_tokens=12, max_image_pixels=PIXELS)
    batch = runner.prompts(records[:5])
    pads = (batch["attention_mask"] == 0).sum(1)
    assert pads.max() > 0 and (batch["attention_mask"][:, -1] == 1).all()  # left padding used
    together = runner.generate(records[:5])
    alone = [runner.generate([r])[0] for r in records[:5]]
    assert together == alone
    assert any(together)


def test_run_keeps_order_and_routes_by_type(tiny, records) -> None:
    model, processor = tiny
    runner = Runner(model, processor, batch_size=3, max_new_tokens=4, max_image_pixels=PIXELS)
    seen: list[int] = []
    out = runner.run(records, "likelihood", advance=lambda n, _r: seen.append(n))
    assert [p.id for p in out] == [r.id for r in records] and sum(seen) == len(records)
    methods = {p.type: p.method for p in out}
    assert methods["vqa_open"] == methods["report"] == "generate"
    assert methods["pope"] == methods["classification"] == "likelihood"
    generated = runner.run(records, "generate")
    assert {p.method for p in generated} == {"generate"}
    assert all(p.candidates is None for p in generated)


def test_predictions_file_is_written_atomically(tmp_path: Path, tiny, records) -> None:
    model, processor = tiny
    preds = Runner(model, processor, max_new_tokens=2, max_image_pixels=PIXELS).run(records[:5])
    out = tmp_path / "sub" / "preds.jsonl"
    assert write_predictions(out, [("v0002", p) for p in preds]) == out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [r.id for r in records[:5]]
    assert {"version", "id", "task", "type", "prediction", "reference", "scoring"} <= set(lines[0])
    assert all(
        set(line["scores"]) == set(r.labels)
        for line, r in zip(lines, records, strict=False)
        if r.labels
    )
    assert [p.name for p in out.parent.iterdir()] == ["preds.jsonl"]  # no temporary left over

"""Training end to end: loss goes down, a version is written once a run finishes, --restart,
precision, dropout, trackers and gradient checkpointing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import TrainingError
from medqwen_cli.training import loop as loop_mod
from medqwen_cli.training.run import train_bundle

FAST = ["train.checkpoint_every=1000", "train.log_every=1"]


def eval_loss(bundle: Path, version: str) -> float:
    """Mean answer-token loss of a version on a fixed set of training records."""
    from medqwen_cli.data.collate import Collator
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.loading import load_adapted
    from medqwen_cli.modeling import cache_dir
    from medqwen_cli.recipe import DatasetSpec

    loaded = load_adapted(Bundle.open(bundle), version)
    records = load_records(
        DatasetSpec(path="builtin:xray"),
        "train",
        cache_dir=cache_dir() / "data",
        max_image_pixels=12544,
    )[:16]
    batch = Collator(loaded.processor, max_image_pixels=12544, max_length=512)(records)
    labels = batch.pop("labels")
    with torch.no_grad():
        total = loop_mod.token_loss_sum(loaded.model(**batch).logits, labels)
    return float(total) / int((labels[:, 1:] != -100).sum())


def test_loss_goes_down_and_a_loadable_version_is_written(bundle_dir: Path) -> None:
    before = eval_loss(bundle_dir, "v0001")
    result = train_bundle(
        bundle_dir, tasks=["xray"], overrides=[*FAST, "train.lr=0.01", "train.max_steps=30"]
    )
    assert result.version == "v0002" and result.steps == 30 and result.tasks == ["xray"]
    after = eval_loss(bundle_dir, "v0002")
    assert after < before - 0.3, (before, after)
    b = Bundle.open(bundle_dir)
    info = b.read_version_info("v0002")
    assert info.parent == "v0001" and set(info.files) == {
        "adapter.safetensors",
        "data.json",  # what it trained on: digests, no record text
        "metrics.json",
        "train_log.jsonl",
    }
    (data,) = b.read_json("data.json", "v0002")["datasets"]
    assert (data["task"], data["path"], data["records"]) == ("xray", "builtin:xray", 96)
    metrics = b.read_json("metrics.json", "v0002")["train"]
    assert metrics["steps"] == 30 and metrics["tokens"] > 0 and set(metrics["router_load"])
    log = (b.root / "versions/v0002/train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, 31))
    assert not (
        b.root / "work"
    ).exists()  # the run's checkpoints are removed once the version exists


def test_max_steps_budget_and_epochs(bundle_dir: Path) -> None:
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.modeling import cache_dir
    from medqwen_cli.recipe import DatasetSpec

    assert train_bundle(bundle_dir, tasks=["ct"], overrides=[*FAST, "train.max_steps=3"]).steps == 3
    n = len(load_records(DatasetSpec(path="builtin:ct"), "train", cache_dir=cache_dir() / "data"))
    # without max_steps: ceil(epochs * records / (batch * accum * processes))
    result = train_bundle(
        bundle_dir,
        tasks=["ct"],
        overrides=[*FAST, "train.max_steps=null", "train.epochs=0.25", "train.batch_size=8"],
        again=True,  # the head trained ct, with max_steps=3
    )
    assert result.steps == -(-(n // 4) // 8) and result.samples == result.steps * 8


@pytest.fixture
def reset_accelerate():
    """accelerate keeps one mixed-precision setting per process: reset it around a test that
    changes it, so the tests after it start from a clean state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield AcceleratorState._reset_state
    AcceleratorState._reset_state()


def test_model_dtype_and_precision_are_honoured_on_cpu(bundle_dir: Path, reset_accelerate) -> None:
    """bfloat16 base weights (model.dtype) and bf16 autocast both train on CPU; adapters stay
    float32; the default stays float32 throughout."""
    runs = {
        ("fp32", "float32"): [],
        ("fp32", "bfloat16"): ["model.dtype=bfloat16"],
        ("bf16", "float32"): ["train.precision=bf16"],
    }
    for expected, overrides in runs.items():
        reset_accelerate()
        result = train_bundle(
            bundle_dir, tasks=["xray"], overrides=[*FAST, "train.max_steps=2", *overrides],
            again=True,  # each run on top of the last
        )  # fmt: skip
        assert (result.precision, result.dtype) == expected
        assert result.final_loss is not None and result.final_loss == result.final_loss
        adapter = Bundle.open(bundle_dir).read_adapter(result.version)
        assert {t.dtype for t in adapter.values()} == {torch.float32}


def test_dropout_and_its_masks_are_training_fields_applied_to_loaded_layers(
    bundle_dir: Path,
) -> None:
    from medqwen_cli.adapters import adapter_layers
    from medqwen_cli.loading import load_adapted
    from medqwen_cli.training.run import resolve_recipe

    bundle = Bundle.open(bundle_dir)
    recipe = resolve_recipe(
        bundle, None, ["adapter.dropout=0.1", "adapter.dropout_masks=per_expert"]
    )  # no structural change: accepted
    model = load_adapted(bundle, adapter=recipe.adapter).model  # as training loads it
    layers = [layer for _, layer in adapter_layers(model)]
    assert layers and all(layer.dropout_masks == "per_expert" for layer in layers)
    assert all(float(layer.dropout.p) == 0.1 for layer in layers)


def test_restart_discards_checkpoints(bundle_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        loop_mod,
        "token_loss_sum",
        lambda logits, labels, positions=None: logits.sum() * float("inf"),
    )
    with pytest.raises(TrainingError):
        train_bundle(
            bundle_dir, tasks=["xray"], overrides=["train.checkpoint_every=1", "train.max_steps=4"]
        )
    monkeypatch.undo()
    result = train_bundle(
        bundle_dir,
        tasks=["xray"],
        overrides=["train.checkpoint_every=1", "train.max_steps=4"],
        restart=True,
    )
    assert result.resumed_from == 0 and result.steps == 4


def test_tensorboard_tracker_and_gradient_checkpointing(bundle_dir: Path) -> None:
    overrides = [
        *FAST,
        "train.max_steps=3",
        "train.trackers=[tensorboard]",
        "train.gradient_checkpointing=true",
    ]
    result = train_bundle(bundle_dir, tasks=["xray"], overrides=overrides)
    assert result.steps == 3 and result.final_loss is not None
    events = list((bundle_dir / "logs").rglob("events.out.tfevents.*"))
    assert events, "tensorboard wrote no event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert Bundle.open(bundle_dir).verify() == []  # logs/ is outside the immutable versions


def test_gradient_checkpointing_gives_the_same_weights(bundle_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    train_bundle(bundle_dir, tasks=["xray"], overrides=[*FAST, "train.max_steps=2"])
    train_bundle(
        other,
        tasks=["xray"],
        overrides=[*FAST, "train.max_steps=2", "train.gradient_checkpointing=true"],
    )
    a, b = Bundle.open(bundle_dir).read_adapter(), Bundle.open(other).read_adapter()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

"""The clinical sequence: registered in order, answered by its rules, contradicting as
documented, with an eval split whose phrasing and sizes train never uses; the rule pair's
records unchanged."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_helpers import spec

from medqwen_cli.data import generate_task, load_records
from medqwen_cli.data.synthetic import SEQUENCE as EXPORTED
from medqwen_cli.data.synthetic import ensure_builtin, generator_version
from medqwen_cli.data.synthetic.looks import LOOKS, render_look
from medqwen_cli.data.synthetic.sequence import (
    BANDS,
    EVAL_MM,
    SEQUENCE,
    SEQUENCE_VERSION,
    TASKS,
    TRAIN_MM,
    contradiction_fractions,
    text_overlap,
)
from medqwen_cli.recipe import BUILTIN_TASKS, load_recipe

REPO = Path(__file__).resolve().parents[2]
SIZE = 60  # train records per task here (eval splits: 30 each)
CONTROL = "seq-ct"
# sha256 of dataset.json, train.jsonl and eval.jsonl of each rule task (seed 0, size 40), as the
# generator wrote them before the sequence existed: the pair's results stay reproducible
RULE_DIGESTS = {
    "cxr-rules": "23ad50d4b74ba0adb197b24577456d2d14aecb08c5478f7a2acb5ec76423456a",
    "derm-rules": "1fa4046f72e6e0dc3bff098b9d50386912a2696ff16912cd9ae1c5663ade4e47",
    "ct-rules": "293318d5a5c738f1d7252346a2c0146d43e99a76b41c5c767299f90d09fb82b0",
}


def _records(cache: Path, name: str, split: str):
    return load_records(spec(f"builtin:{name}"), split, cache_dir=cache, builtin_size=SIZE)


def _manifest(cache: Path, name: str) -> dict:
    root = ensure_builtin(name, cache, seed=0, size=SIZE)
    return json.loads((root / "dataset.json").read_text())


@pytest.mark.parametrize("name", sorted(RULE_DIGESTS))
def test_rule_pair_records_are_unchanged(tmp_path: Path, name: str) -> None:
    out = generate_task(name, tmp_path, seed=0, size=40)
    digest = hashlib.sha256()
    for file in ("dataset.json", "train.jsonl", "eval.jsonl"):
        digest.update((out / file).read_bytes())
    assert digest.hexdigest() == RULE_DIGESTS[name]
    assert generator_version(name) == "1"


def test_sequence_is_registered_in_order(builtin_cache: Path) -> None:
    assert len(SEQUENCE) >= 5 and list(SEQUENCE) == list(TASKS) and EXPORTED == SEQUENCE
    positions = [BUILTIN_TASKS.index(name) for name in SEQUENCE]
    assert positions == sorted(positions)
    assert len({TASKS[n].look for n in SEQUENCE}) == len(SEQUENCE) == len(LOOKS)
    root = ensure_builtin(SEQUENCE[0], builtin_cache, seed=0, size=SIZE)
    assert root.name == f"{SEQUENCE[0]}-{SEQUENCE_VERSION}-0-n{SIZE}"
    manifest = _manifest(builtin_cache, SEQUENCE[0])
    assert manifest["sequence"] == {"order": list(SEQUENCE), "position": 1}
    assert manifest["counts"] == {"train": SIZE, "eval": SIZE // 2, "eval-template": SIZE // 2}


def test_sequence_recipe_names_every_task_and_both_eval_splits() -> None:
    recipe = load_recipe(REPO / "recipes/sequence/nano.yaml")
    assert list(recipe.tasks)[: len(SEQUENCE)] == list(SEQUENCE)
    for name in SEQUENCE:
        (unseen,) = recipe.task_datasets(name)
        (template,) = recipe.task_datasets(f"{name}-template")
        assert unseen.path == template.path == f"builtin:{name}"
        assert (unseen.eval_split, template.eval_split) == ("eval", "eval-template")


@pytest.mark.parametrize("name", SEQUENCE)
def test_answers_follow_the_task_rules(builtin_cache: Path, name: str) -> None:
    task = TASKS[name]
    for split in ("train", "eval", "eval-template"):
        records = _records(builtin_cache, name, split)
        assert Counter(r.meta["kind"] for r in records) == {"side": len(records) // 2,
                                                             "size": len(records) // 2}  # fmt: skip
        for r in records:
            m = r.meta
            assert r.type == "vqa_closed" and r.answer in r.labels and r.task == name
            assert f"{m['size_mm']}" in r.question and m["image_side"] in r.question
            if m["kind"] == "side":
                flipped = {"left": "right", "right": "left"}[m["image_side"]]
                assert r.answer == (flipped if task.mirrored else m["image_side"])
            else:
                assert r.answer == ("large" if m["size_mm"] >= task.large_mm else "small")


def test_contradictions_measured_on_the_data(builtin_cache: Path) -> None:
    """Every task after the first but the control contradicts an earlier task on at least a
    third of its records; the control contradicts none; dataset.json reports what it wrote."""
    for position, name in enumerate(SEQUENCE):
        records = _records(builtin_cache, name, "train")
        fractions = contradiction_fractions(name, (r.meta for r in records))
        assert list(fractions) == list(SEQUENCE[:position])
        assert _manifest(builtin_cache, name)["contradiction"] == fractions
        for earlier, share in fractions.items():
            flagged = sum(earlier in r.meta["contradicts"] for r in records) / len(records)
            assert share == pytest.approx(flagged, abs=1e-4)
        if name == CONTROL:
            assert position > 0 and not any(fractions.values())
        elif position:
            assert max(fractions.values()) >= 1 / 3, (name, fractions)


def _numbers(texts) -> set[str]:
    return {n for t in texts for n in re.findall(r"\d+", t)}


@pytest.mark.parametrize("name", SEQUENCE)
def test_eval_phrasing_and_sizes_are_unseen_in_train(builtin_cache: Path, name: str) -> None:
    train = _records(builtin_cache, name, "train")
    unseen = _records(builtin_cache, name, "eval")
    template = _records(builtin_cache, name, "eval-template")
    train_texts = [r.question for r in train]
    overlap = _manifest(builtin_cache, name)["overlap"]
    assert text_overlap((r.question for r in unseen), train_texts) == 0
    assert overlap["eval"] == {"texts_in_train": 0, "records": len(unseen)}
    assert overlap["eval-template"]["texts_in_train"] == text_overlap(
        (r.question for r in template), train_texts
    )
    for field in ("template", "wording", "noun"):  # disjoint phrase families
        assert not {r.meta[field] for r in unseen} & {r.meta[field] for r in train}
        assert {r.meta[field] for r in template} <= {r.meta[field] for r in train}
    joined = "\n".join(train_texts)
    assert not any(r.meta["wording"] in joined or r.meta["noun"] in joined for r in unseen)
    assert not _numbers(r.question for r in unseen) & _numbers(train_texts)  # sizes too
    assert _numbers(r.question for r in template) <= {str(v) for v in TRAIN_MM}


def test_every_eval_size_is_decided_by_train_sizes() -> None:
    """Train holds both neighbours of every cut-off, so an unseen size has one answer."""
    assert not set(EVAL_MM) & set(TRAIN_MM)
    for name in SEQUENCE:
        cut = TASKS[name].large_mm
        assert {cut - 1, cut} <= set(TRAIN_MM) and cut in {lo for lo, _ in BANDS}
    for lo, hi in BANDS:
        assert any(lo <= v <= hi for v in EVAL_MM) and any(lo <= v <= hi for v in TRAIN_MM)


@pytest.mark.parametrize("look", LOOKS)
def test_look_puts_the_lesion_on_the_stated_image_side(look: str) -> None:
    pixels = {}
    for side in ("left", "right"):  # the same seed: the same background, only the lesion moves
        image = render_look(look, image_side=side, level="upper", size_mm=40, large=True,
                            size=112, rng=np.random.default_rng(7))  # fmt: skip
        pixels[side] = np.asarray(image.convert("L"), dtype=np.float64)  # (112, 112)
    diff = pixels["left"] - pixels["right"]  # (112, 112): + where left is brighter
    half = diff.shape[1] // 2
    contrast = -1 if look in ("skin", "thyroid") else 1  # a dark mole, a hypoechoic nodule
    assert contrast * diff[:, :half].sum() > 0 > contrast * diff[:, half:].sum()

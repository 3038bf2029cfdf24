"""Built-in tasks that need no download: `generate_task(name, out_dir, seed=0, size=None)`.

One task per `BUILTIN_TASKS` name. `xray`, `ct`, `mri`, `fundus` and `pathology` are
synthetic: each record is a freshly drawn case of that modality (0-2 findings with side,
level, size and count; see `scenes`) rendered as a small PNG (`render`), with a question of
one of the five record types in turn (`questions`). Tasks differ in look, findings vocabulary
and report style, so training on them in sequence shows forgetting. `dicom` uses real images
from pydicom's test files (`dicom_task`). `cxr-rules`, `ct-rules` and `derm-rules` ask the same
closed questions (side of the patient, small or large) answered by each modality's reading rules:
a conflict pair (cxr-rules -> derm-rules) and its control (cxr-rules -> ct-rules); see `rules`.
`seq-cxr`, `seq-ct`, `seq-derm`, `seq-mammo` and `seq-thyroid` are the clinical sequence (five
modalities in `sequence.SEQUENCE` order, their own rules, an `eval` split of unseen phrasing
beside an `eval-template` one; see `sequence`, written by `sequence_task`).

Output directory::

    dataset.json   {"name", "generator_version", "seed", "image_size", "counts", ...}
    train.jsonl    native records (see medqwen_cli.data.records), image paths relative
    eval.jsonl
    images/*.png

Defaults: 96 train and 32 eval records of 112 px; `size` sets the train count (eval: a third
of it, between 8 and 32). The rule tasks: 400 train and 160 eval records (eval: half of `size`,
between 8 and 160). Everything derives from `seed` through numpy's seeded generators
(train and eval streams independent), so a seed gives byte-identical files.

`ensure_builtin` is what `load_records("builtin:NAME")` calls: it generates into
`cache_dir/builtin/<NAME>-<generator version>-<seed>[-n<size>]/` once, atomically (a temporary
directory renamed into place, so concurrent processes never see half a dataset).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from medqwen_cli._io import build_dir_atomic
from medqwen_cli.data.synthetic.questions import POPE_SPLITS, TYPES, build, case_for
from medqwen_cli.data.synthetic.render import RENDERERS
from medqwen_cli.data.synthetic.rules import RULES, render_rule_image, rule_record, rule_split_sizes
from medqwen_cli.data.synthetic.scenes import MODALITIES
from medqwen_cli.data.synthetic.sequence import SEQUENCE, SEQUENCE_VERSION
from medqwen_cli.data.synthetic.sequence import TASKS as SEQUENCE_TASKS
from medqwen_cli.data.synthetic.sequence_task import generate_sequence_task
from medqwen_cli.errors import DataError
from medqwen_cli.recipe import BUILTIN_TASKS

GENERATOR_VERSION = "1"
IMAGE_SIZE = 112
DEFAULT_TRAIN = 96
DEFAULT_EVAL = 32

__all__ = [
    "GENERATOR_VERSION",
    "SEQUENCE",
    "ensure_builtin",
    "generate_task",
    "generator_version",
    "split_sizes",
]


def generator_version(name: str) -> str:
    """The generator version of built-in task `name`: the sequence's tasks have their own, so
    changing them never changes the other tasks' data (nor their cache directories)."""
    return SEQUENCE_VERSION if name in SEQUENCE_TASKS else GENERATOR_VERSION


def split_sizes(size: int | None) -> tuple[int, int]:
    """(train, eval) record counts for a requested train size."""
    if size is None:
        return DEFAULT_TRAIN, DEFAULT_EVAL
    if size < 1:
        raise DataError(f"built-in task size must be at least 1, got {size}")
    return size, max(8, min(DEFAULT_EVAL, size // 3))


def generate_task(
    name: str,
    out_dir: Path | str,
    *,
    seed: int = 0,
    size: int | None = None,
    image_size: int = IMAGE_SIZE,
) -> Path:
    """Write the built-in task `name` into `out_dir` (created if needed); return `out_dir`."""
    if name not in BUILTIN_TASKS:
        raise DataError(
            f"unknown built-in task {name!r}", f"built-in tasks: {', '.join(BUILTIN_TASKS)}"
        )
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if name == "dicom":
        from medqwen_cli.data.synthetic.dicom_task import generate_dicom_task

        counts = generate_dicom_task(out, seed=seed, size=size, image_size=image_size)
        extra: dict[str, object] = {"source": "pydicom test files"}
    elif name in SEQUENCE_TASKS:
        counts, extra = generate_sequence_task(
            name, out, seed=seed, size=size, image_size=image_size,
            task_index=BUILTIN_TASKS.index(name),
        )  # fmt: skip
    elif name in RULES:
        counts = _generate_rules(name, out, seed=seed, size=size, image_size=image_size)
        rules = RULES[name]
        extra = {"rules": {"mirrored": rules.mirrored, "large_mm": rules.large_mm}}
    else:
        counts, types = _generate_synthetic(name, out, seed=seed, size=size, image_size=image_size)
        modality = MODALITIES[name]
        extra = {"modality": modality.noun, "findings": list(modality.findings), "types": types}
    manifest = {
        "name": name,
        "generator_version": generator_version(name),
        "seed": seed,
        "size": size,
        "image_size": image_size,
        "counts": counts,
        **extra,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (out / "dataset.json").write_text(text, encoding="utf-8")
    return out


def _generate_synthetic(
    name: str, out: Path, *, seed: int, size: int | None, image_size: int
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    modality = MODALITIES[name]
    render = RENDERERS[name]
    counts, types = {}, {}
    for stream, (split, n) in enumerate(zip(("train", "eval"), split_sizes(size), strict=True)):
        rng = np.random.default_rng([seed, BUILTIN_TASKS.index(name), stream])
        lines, tally, pope_count = [], Counter(), 0
        for i in range(n):
            kind = TYPES[i % len(TYPES)]
            positive = bool(rng.random() < 0.5)
            case = case_for(kind, modality, rng, positive)
            image = render(case, modality, image_size, rng)
            rel = f"images/{split}-{i:04d}.png"
            image.save(out / rel, format="PNG")
            item = build(
                kind,
                case,
                modality,
                rng,
                pope_split=POPE_SPLITS[pope_count % len(POPE_SPLITS)],
                positive=positive,
            )
            pope_count += kind == "pope"
            tally[kind] += 1
            record = {"id": f"{name}-{split}-{i:04d}", "type": kind, "images": [rel], **item}
            lines.append(json.dumps(record, ensure_ascii=False))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[split] = n
        types[split] = dict(sorted(tally.items()))
    return counts, types


def _generate_rules(
    name: str, out: Path, *, seed: int, size: int | None, image_size: int
) -> dict[str, int]:
    rules, counts = RULES[name], {}
    for stream, (split, n) in enumerate(
        zip(("train", "eval"), rule_split_sizes(size), strict=True)
    ):
        rng = np.random.default_rng([seed, BUILTIN_TASKS.index(name), stream])
        lines = []
        for i in range(n):
            item, case = rule_record(rules, rng, i)
            rel = f"images/{split}-{i:04d}.png"
            render_rule_image(rules, case, image_size, rng).save(out / rel, format="PNG")
            record = {
                "id": f"{name}-{split}-{i:04d}",
                "type": "vqa_closed",
                "images": [rel],
                **item,
            }
            lines.append(json.dumps(record, ensure_ascii=False))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[split] = n
    return counts


def ensure_builtin(
    name: str, cache_dir: Path | str, *, seed: int = 0, size: int | None = None
) -> Path:
    """The generated directory of a built-in task under `cache_dir/builtin/`, made on first
    use (atomically)."""
    tag = f"{name}-{generator_version(name)}-{seed}" + (f"-n{size}" if size is not None else "")
    target = Path(cache_dir) / "builtin" / tag
    if (target / "dataset.json").is_file():
        return target
    if target.exists():
        raise DataError(
            f"built-in dataset directory {target} is incomplete (no dataset.json)",
            f"delete it (rm -r {target}); it is regenerated on the next run",
        )
    build_dir_atomic(
        target,
        lambda tmp: generate_task(name, tmp, seed=seed, size=size),
        complete=lambda d: (d / "dataset.json").is_file(),
    )
    return target

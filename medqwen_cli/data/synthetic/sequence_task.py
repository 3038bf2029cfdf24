"""Writing one task of the clinical sequence (`sequence`): three splits and what they measure.

`generate_sequence_task` writes `train.jsonl`, `eval.jsonl` (unseen phrasing) and
`eval-template.jsonl` (the train phrasing) with their images, and returns the counts and the
dataset.json fields measured on what it wrote:

    overlap         per eval split: eval texts found word for word among the train texts
    sizes_mm        per split: the sizes its records state (eval shares none with train)
    contradiction   per earlier task: the share of this task's train records whose answer
                    that task's rules would give otherwise (`contradiction_fractions`)

Each split has its own seeded stream ([seed, task index, split index]), so a seed gives
byte-identical files and the splits are independent draws.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medqwen_cli.data.synthetic.looks import render_look
from medqwen_cli.data.synthetic.rules import rule_split_sizes
from medqwen_cli.data.synthetic.sequence import (
    SEQUENCE,
    SEQUENCE_VERSION,
    SPLITS,
    TASKS,
    contradiction_fractions,
    sequence_record,
    text_overlap,
)


def generate_sequence_task(
    name: str, out: Path, *, seed: int, size: int | None, image_size: int, task_index: int
) -> tuple[dict[str, int], dict[str, object]]:
    """Write the three splits of sequence task `name` into `out`; return (counts, the extra
    dataset.json fields). `task_index` is the task's place in BUILTIN_TASKS (its seed stream)."""
    task = TASKS[name]
    n_train, n_eval = rule_split_sizes(size)
    written: dict[str, list[dict]] = {}
    for stream, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, task_index, stream])
        records = []
        for i in range(n_train if split == "train" else n_eval):
            item = sequence_record(name, split, rng, i)
            m = item["meta"]
            rel = f"images/{split}-{i:04d}.png"
            image = render_look(
                task.look, image_side=m["image_side"], level=m["level"], size_mm=m["size_mm"],
                large=m["size_mm"] >= task.large_mm, size=image_size, rng=rng,
            )  # fmt: skip
            image.save(out / rel, format="PNG")
            records.append({"id": f"{name}-{split}-{i:04d}", "type": "vqa_closed",
                            "images": [rel], **item})  # fmt: skip
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written[split] = records
    train_texts = [r["question"] for r in written["train"]]
    extra: dict[str, object] = {
        "sequence": {"order": list(SEQUENCE), "position": SEQUENCE.index(name) + 1},
        "sequence_version": SEQUENCE_VERSION,
        "rules": {"mirrored": task.mirrored, "large_mm": task.large_mm, "look": task.look},
        "splits": {
            "train": "train phrasing",
            "eval": "unseen phrasing (the default eval)",
            "eval-template": "train phrasing, other draws",
        },  # fmt: skip
        "overlap": {
            split: {
                "texts_in_train": text_overlap(
                    (r["question"] for r in written[split]), train_texts
                ),
                "records": len(written[split]),
            }
            for split in SPLITS[1:]
        },
        "sizes_mm": {s: sorted({r["meta"]["size_mm"] for r in written[s]}) for s in SPLITS},
        "contradiction": contradiction_fractions(name, (r["meta"] for r in written["train"])),
    }
    return {split: len(records) for split, records in written.items()}, extra

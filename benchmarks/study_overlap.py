"""How many of the strategy study's scored A texts were also training texts.

A's eval records are disjoint from its train records as records (other ids, other images), but
cxr-rules has one question template: "<modality>: a <size> mm lesion in the <upper|lower>
<left|right> of the image. <side or size question>". This counts, per scored eval record of A
(the ids in the results file's after-A rows), whether its question text appears word for word
among A's train texts, and among each seed's protect sample (the `continual.protect_records`
train records `--protect` computed A's basis from at the start of B, drawn as protect draws
them).

    .venv/bin/python benchmarks/study_overlap.py [--results benchmarks/results/continual-strategies.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_stats import TASK_A  # noqa: E402


def main() -> None:
    from medqwen_cli.continual.protect import sample
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.modeling import data_cache_dir
    from medqwen_cli.recipe import DatasetSpec

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    default = Path(__file__).resolve().parent / "results/continual-strategies.json"
    parser.add_argument("--results", type=Path, default=default)
    parser.add_argument("--protect-records", type=int, default=100)
    args = parser.parse_args()
    results = json.loads(args.results.read_text(encoding="utf-8"))
    spec = DatasetSpec(path=f"builtin:{TASK_A}")
    train = load_records(spec, "train", cache_dir=data_cache_dir())
    evals = {r.id: r for r in load_records(spec, "eval", cache_dir=data_cache_dir())}
    scored = [row[0] for row in results["runs"][0]["after_A"][TASK_A]["records"]]
    texts = [evals[i].question for i in scored]
    train_texts = {r.question for r in train}
    print(f"{TASK_A}: {len(train)} train records ({len(train_texts)} distinct texts), "
          f"{len(scored)} scored eval records ({len(set(texts))} distinct texts)")  # fmt: skip
    inside = sum(t in train_texts for t in texts)
    print(f"scored eval texts found word for word among the train texts: {inside} of {len(texts)}")
    for seed in sorted({run["seed"] for run in results["runs"]}):
        chosen = {r.question for r in sample(train, args.protect_records, seed, 0)}
        hits = sum(t in chosen for t in texts)
        print(f"seed {seed}: among its {args.protect_records}-record protect sample: {hits}")


if __name__ == "__main__":
    main()

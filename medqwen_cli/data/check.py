"""`check_datasets`: read every dataset a recipe names, in every split it uses, and list every
problem at once (what `medqwen validate` runs once the recipe itself is valid).

- Which: each dataset of `data.datasets` and of `tasks.*.datasets`, for its training split
  (`split`) and its evaluation split (`eval_split`, unless null): what `train`, `continue` and
  `evaluate` would read. A dataset named in several places is read once per split and reported
  under its first recipe field.
- How: exactly as those commands read it (`read_dataset` in collect mode, the readers' own
  per-record checks): JSON syntax, fields, task types, labels, duplicate ids, and each image's
  existence and header (`ImageResolver`: the header and the file's structure are checked, the
  pixels are never decoded). DICOM files and MedMNIST arrays are converted into the cache as
  training would convert them.
- Built-in datasets (`builtin:NAME`) are generated into the cache on first use, as `train` does
  (about a second each, then read from the cache), and checked like any other dataset.

A problem is `where` (`file:line`, or the file for one that stops the whole file), `problem`
(what is wrong and which field; never a record's text, which may be patient data), and the hint.

A dataset without its eval split (a single file holds one split, the training one:
`MissingSplit`) is a warning, not a problem: training reads it, and `evaluate` and `continue`
leave it out of the scores with a note. `validate` must not be stricter than the commands it
checks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medqwen_cli.data.readers import read_dataset
from medqwen_cli.errors import DataError, MissingSplit
from medqwen_cli.recipe import DatasetSpec, Recipe

# "<absolute path>[:<line>]: <what>", the form of every reader message (records.data_error)
_WHERE = re.compile(r"^(?P<where>/.*?(?::\d+)?): (?P<what>.+)$", re.DOTALL)


@dataclass
class DataProblem:
    where: str  # file:line, or the file
    problem: str
    dataset: str  # recipe field of the dataset, e.g. tasks.xray.datasets.0
    split: str
    hint: str | None = None


@dataclass
class SplitCheck:
    """One (dataset, split) read: how many records were good, and what was wrong."""

    dataset: str
    name: str
    split: str
    path: str
    records: int
    problems: list[DataProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe_datasets(recipe: Recipe) -> list[tuple[str, DatasetSpec]]:
    """(recipe field, spec) for every dataset the recipe names, in recipe order."""
    groups = [("data.datasets", recipe.data.datasets)] + [
        (f"tasks.{name}.datasets", task.datasets) for name, task in recipe.tasks.items()
    ]
    return [(f"{prefix}.{i}", spec) for prefix, specs in groups for i, spec in enumerate(specs)]


def check_datasets(recipe: Recipe, *, cache_dir: Path | None = None) -> list[SplitCheck]:
    """Read each dataset split the recipe uses and report every problem (module docstring)."""
    if cache_dir is None:
        from medqwen_cli.base_files import data_cache_dir

        cache_dir = data_cache_dir()
    checks: list[SplitCheck] = []
    seen: set[tuple[str, ...]] = set()
    for dataset, spec in recipe_datasets(recipe):
        for split in dict.fromkeys(s for s in (spec.split, spec.eval_split) if s):
            key = (spec.path, spec.format, str(spec.task_type), split)
            if key in seen:
                continue
            seen.add(key)
            loaded = read_dataset(
                spec, split, cache_dir=cache_dir,
                max_image_pixels=recipe.train.max_image_pixels, collect=True,
            )  # fmt: skip
            missing = [e for e in loaded.problems if isinstance(e, MissingSplit)]
            errors = [e for e in loaded.problems if not isinstance(e, MissingSplit)]
            checks.append(
                SplitCheck(
                    dataset=dataset,
                    name=spec.display_name,
                    split=split,
                    path=str(loaded.path),
                    records=len(loaded.records),
                    problems=sorted(
                        (_problem(e, dataset, split, loaded.path) for e in errors),
                        key=_line_order,
                    ),
                    warnings=[*loaded.warnings, *(_not_scored(e, dataset) for e in missing)],
                )
            )
    return checks


def _problem(error: DataError, dataset: str, split: str, path: Path) -> DataProblem:
    match = _WHERE.match(error.message)
    where, what = (match["where"], match["what"]) if match else (str(path), error.message)
    return DataProblem(where=where, problem=what, dataset=dataset, split=split, hint=error.hint)


def _not_scored(error: MissingSplit, dataset: str) -> str:
    """The warning of a dataset without its eval split: what it means for the scores, the fix."""
    return f"{error.message}: evaluate and continue will not score {dataset} (hint: {error.hint})"


def _line_order(problem: DataProblem) -> tuple[str, int]:
    """File, then line (a whole-file problem first): duplicates are found after the others."""
    file, _, line = problem.where.rpartition(":")
    return (file, int(line)) if line.isdigit() else (problem.where, 0)

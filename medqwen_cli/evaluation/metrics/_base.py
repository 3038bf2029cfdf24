"""Shared plumbing for the package's `evaluate.Metric` subclasses.

`evaluate.load("bleu")` fetches a script from the Hub and fails offline, so every metric here is a
class defined in the package and instantiated directly. Instances keep their predictions in memory
(`keep_in_memory=True`): no Arrow cache file and no file lock are written, so concurrent processes
cannot clash on a shared cache path. `evaluate` still creates an empty directory for the module
under `cache_dir`; it goes to the system temporary directory, never to the user's HF cache.

Imports in these modules stay one module per `import` line: evaluate's import scanner (used if a
module is ever loaded by path) misreads `import a, b`; `from x import a, b` reads correctly.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from types import ModuleType
from typing import Any

import datasets
import evaluate

from medqwen_cli.errors import EvaluationError

STRING = datasets.Value("string")
STRINGS = datasets.Sequence(datasets.Value("string"))


def scratch_dir() -> str:
    """Where `evaluate` may create its (empty) per-module directories."""
    return os.path.join(tempfile.gettempdir(), "medqwen-metrics")


def string_features(multi_reference: bool = False) -> list[datasets.Features]:
    """Features for text metrics: one reference per prediction, or (also) a list of references."""
    single = datasets.Features({"predictions": STRING, "references": STRING})
    if not multi_reference:
        return [single]
    return [datasets.Features({"predictions": STRING, "references": STRINGS}), single]


def backend(module: str) -> ModuleType:
    """Import a metric backend from the `metrics` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EvaluationError(
            f"the metric backend {module!r} is not installed",
            hint="reinstall medqwen-cli with its dependencies (sacrebleu, rouge-score, scikit-learn): pip install -c constraints.txt -e .",
        ) from exc


def metric_info(description: str, features: Any, citation: str = "") -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=description,
        features=features,
    )


class InMemoryMetric(evaluate.Metric):
    """An `evaluate.Metric` that defaults to in-memory storage in a scratch directory."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("keep_in_memory", True)
        kwargs.setdefault("cache_dir", scratch_dir())
        super().__init__(**kwargs)

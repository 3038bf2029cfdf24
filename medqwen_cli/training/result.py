"""The result of a `train` or `continue` run: what the CLI renders and `metrics.json` keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainResult:
    bundle: str
    version: str
    parent: str | None
    tasks: list[str]
    steps: int
    samples: int
    tokens: int
    final_loss: float | None
    mean_loss: float | None
    seconds: float
    resumed_from: int
    precision: str = "fp32"  # mixed precision of the loop: fp32 (none), bf16 or fp16 autocast
    dtype: str = "float32"  # dtype of the frozen base's weights (adapters stay float32)
    router_load: dict[str, list[float]] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    # The watch's curve: headline points {version, step, steps, task, metric, value, n}
    curves: list[dict[str, Any]] = field(default_factory=list)
    # The continual strategy: None, or {strategy, its settings, where it drew on} (no ids)
    continual: dict[str, Any] | None = None
    # What the evaluations left out (a task without an eval split), one line each, once per task
    notes: list[str] = field(default_factory=list)
    # The verdict on the recipe's acceptance criteria (acceptance.jsonl's line), None without any
    acceptance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""The training watch: score earlier tasks on the model being trained, for a forgetting curve.

While a version trains on task B, each watched task A is scored at the steps

    due(k) = k == 0  or  k % every == 0  or  k == total     (k: optimizer steps done)

exactly as `medqwen evaluate` scores a version (same records, Runner and metrics, through
`evaluation.api.score_model`), on the adapters as they are after k steps. The curve of A is
its headline score against k (the MedQwen paper's Figure 5).

The watch must not change training. Around each point it saves and restores what a forward pass
in eval mode could touch: the torch (and CUDA) RNG, Python's and NumPy's RNG, every module's
train/eval flag, the routers' load statistics (`load_counts`, `routed_tokens`) and the tensors
the layers keep of the latest forward (`last_balance_loss`, `token_mask`), and the model's cached
`rope_deltas`; it answers without gradients. A run with a watch thus writes the same adapter,
bit for bit, as the same run without one.

Points are buffered in the run's work directory, `<bundle>/work/<run key>/curve.jsonl`, one
line per (step, task, metric) without a version id (none exists yet). A resumed run keeps the
points up to its checkpoint (`truncate`) and scores the rest; `publish` (training/run.py)
appends the buffer to evals.jsonl, stamped with the new version id, once the version exists.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medqwen_cli.bundle import atomic_write_bytes
from medqwen_cli.evaluation.api import TaskData, eval_lines, score_model

CURVE_FILE = "curve.jsonl"
CurveFn = Callable[[list[dict[str, Any]]], None]  # the headline rows of one scored step


def due(step: int, total: int, every: int) -> bool:
    """Whether step `step` of `total` is a point of the curve."""
    return step == 0 or step % every == 0 or step == total


def expected_steps(total: int, every: int) -> list[int]:
    """Every step `due` selects: 0, every, 2 * every, ..., total."""
    return [k for k in range(total + 1) if due(k, total, every)]


def headline_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The curve as `TrainResult.curves` shows it: one point per (step, task), headline only."""
    keys = ("version", "step", "steps", "task", "metric", "value", "n")
    return [{k: r[k] for k in keys if k in r} for r in rows if r.get("headline")]


class Watch:
    """Scores `tasks` at the due steps and buffers the rows in `run_dir` (main process only)."""

    def __init__(
        self,
        recipe: Any,
        processor: Any,
        tasks: dict[str, TaskData],
        *,
        every: int,
        run_dir: Path,
        curve_fn: CurveFn | None = None,
    ) -> None:
        self.recipe, self.processor, self.tasks = recipe, processor, tasks
        self.every = every
        self.path = run_dir / CURVE_FILE
        self.curve_fn = curve_fn

    def due(self, step: int, total: int) -> bool:
        return due(step, total, self.every)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate(self, step: int) -> None:
        """Keep the buffered rows of steps <= `step` (the checkpoint resumed from) of this watch
        (same tasks, same interval); a resumed run scores the later steps again."""
        rows = self.rows()
        kept = [
            r for r in rows
            if r["step"] <= step and r["task"] in self.tasks and r.get("eval_every") == self.every
        ]  # fmt: skip
        if len(kept) != len(rows):
            self._write(kept)

    def __call__(self, model: nn.Module, step: int, total: int) -> None:
        """Score every watched task at `step` unless the buffer already has it."""
        done = {(r["step"], r["task"]) for r in self.rows()}
        todo = {name: data for name, data in self.tasks.items() if (step, name) not in done}
        if not todo:
            return
        with preserved_training_state(model):
            scored = score_model(model, self.processor, self.recipe, todo)
        rows = [
            {**row, "step": step, "steps": total, "eval_every": self.every,
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            for row in eval_lines(None, scored)
        ]  # fmt: skip
        self._write(self.rows() + rows)
        if self.curve_fn is not None:
            self.curve_fn(headline_points(rows))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """The whole buffer, atomically (small: a crash never leaves half a step)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.path, text.encode("utf-8"))


@contextmanager
def preserved_training_state(model: nn.Module):
    """Run the body in eval mode without gradients, then put back everything it may change."""
    from medqwen_cli.adapters import adapter_layers

    modes = [(m, m.training) for m in model.modules()]
    layers = [layer for _, layer in adapter_layers(model)]
    stats = [
        (layer.load_counts.clone(), layer.routed_tokens.clone(), layer.last_balance_loss,
         layer.token_mask)
        for layer in layers
    ]  # fmt: skip
    cached = [(m, m.rope_deltas) for m in model.modules() if hasattr(m, "rope_deltas")]
    rng = _rng_state()
    try:
        with torch.no_grad():
            yield
    finally:
        _set_rng_state(rng)
        for module, rope_deltas in cached:
            module.rope_deltas = rope_deltas
        for layer, (counts, routed, balance, mask) in zip(layers, stats, strict=True):
            layer.load_counts.copy_(counts)
            layer.routed_tokens.copy_(routed)
            layer.last_balance_loss, layer.token_mask = balance, mask
        for module, training in modes:
            module.training = training


def _rng_state() -> dict[str, Any]:
    import numpy as np

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])

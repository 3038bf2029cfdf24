"""Fidelity of an export: logits against the routed model, and task metrics before/after."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medqwen_cli.merge.calibration import to_model
from medqwen_cli.merge.core import Fidelity, ProgressFn
from medqwen_cli.recipe import Recipe


@torch.no_grad()
def logit_fidelity(
    reference: Any,
    candidate: Any,
    batches: Sequence[dict[str, Tensor]],
    progress: ProgressFn | None = None,
) -> Fidelity:
    """Relative logit error and top-1 agreement of `candidate` against `reference` over the
    non-padding tokens of `batches` (see the module docstring)."""
    tokens, rel_sum, rel_max, agree, samples = 0, 0.0, 0.0, 0, 0
    if progress is not None:  # the phase starts: a plain log line says so at once
        progress(0, len(batches), "measuring fidelity")
    for i, batch in enumerate(batches):
        ref = reference(**to_model(batch, reference)).logits  # (B, L, V)
        cand = candidate(**to_model(batch, candidate)).logits  # (B, L, V)
        for row, mask in enumerate(batch["attention_mask"].bool()):  # row by row: less memory
            z = ref[row][mask.to(ref.device)].float()  # (T, V) non-padding tokens
            z2 = cand[row][mask.to(cand.device)].float().to(z.device)  # (T, V)
            rel = (z2 - z).norm(dim=-1) / z.norm(dim=-1).clamp_min(1e-12)  # (T,)
            tokens += rel.numel()
            rel_sum += float(rel.double().sum())
            rel_max = max(rel_max, float(rel.max())) if rel.numel() else rel_max
            agree += int((z2.argmax(-1) == z.argmax(-1)).sum())
            samples += 1
        if progress is not None:
            progress(i + 1, len(batches), "measuring fidelity")
    return Fidelity(
        samples=samples, tokens=tokens, mean_relative_logit_error=rel_sum / max(tokens, 1),
        max_relative_logit_error=rel_max, top1_agreement=agree / max(tokens, 1), measured_with="",
    )  # fmt: skip


def task_metrics(
    recipe: Recipe,
    tasks: Sequence[str],
    reference: Any,
    candidate: Any,
    processor: Any,
    *,
    data_dir: Path,
    progress: ProgressFn | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Each task's headline metric with the routed model (before) and the export (after), and
    under `parts` each record type's own headline (a mixed task's headline is their mean).

    The records, n and scoring are those of `medqwen evaluate` on the same version: the same
    functions read and score them (`load_eval_tasks`: every dataset's eval split, capped at
    eval.max_samples taken in turn from each record type and POPE answer; `score_model`: the
    recipe's eval.scoring), so "before" is the score `evaluate` records for the version. The
    note says which tasks were left out and why. Built-in data are generated under `data_dir`
    (`Settings.data_cache_dir`)."""
    from medqwen_cli.evaluation.api import load_eval_tasks, score_model

    notes: list[str] = []
    data = load_eval_tasks(recipe, tasks, data_dir=data_dir, notes=notes)
    rows = {name: {"task": name, "n": len(d.records), "scoring": recipe.eval.scoring}
            for name, d in data.items()}  # fmt: skip
    models = (("before", "routed model", reference), ("after", "export", _unwrap_peft(candidate)))
    for label, who, model in models:  # the Runner reads transformers' attributes: no PeftModel
        step = _scoring_step(progress, who)
        if data:
            step(0, sum(len(d.records) for d in data.values()), next(iter(data)))
        for scored in score_model(model, processor, recipe, data, progress=step).tasks:
            row = rows[scored.task]
            row["metric"], row[label] = scored.headline_metric, scored.headline
            if scored.headline is None:  # undefined, never read as 0: say why
                row[f"{label}_reason"] = scored.headline_reason
            for kind, scores in scored.by_type.items():  # each record type's own headline
                part = row.setdefault("parts", {}).setdefault(f"{kind}.{scores.headline}", {})
                part[label] = scores.headline_value
    return list(rows.values()), "; ".join(notes) or None


def _scoring_step(progress: ProgressFn | None, who: str) -> ProgressFn:
    """`score_model`'s progress (records done, total, task) as a phase of the export."""

    def step(done: int, total: int, task: str) -> None:
        if progress is not None:
            progress(done, total, f"task metric: {task} with the {who}")

    return step


def _unwrap_peft(model: Any) -> Any:
    """A PeftModel's transformers model (its LoRA layers in place), else the model itself."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model

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
) -> tuple[list[dict[str, Any]], str | None]:
    """Each task's headline metric on its eval split (first eval.max_samples records), with the
    routed model (before) and the export (after), and under `parts` each record type's own
    headline (a mixed task's headline is their mean); the note says which tasks were skipped.
    Built-in data are generated under `data_dir` (`Settings.data_cache_dir`)."""
    from medqwen_cli.data.readers import load_records
    from medqwen_cli.errors import MissingSplit
    from medqwen_cli.evaluation.runner import Runner
    from medqwen_cli.evaluation.summary import score_task_predictions

    candidate = _unwrap_peft(candidate)  # the Runner reads transformers' attributes
    rows, skipped = [], []
    for name in tasks:
        specs = [s for s in recipe.task_datasets(name) if s.eval_split]
        if not specs:
            skipped.append(name)
            continue
        records, kept = [], []
        for spec in specs:
            try:
                records += load_records(
                    spec, spec.eval_split, cache_dir=data_dir,
                    max_image_pixels=recipe.train.max_image_pixels,
                )  # fmt: skip
                kept.append(spec)
            except MissingSplit:  # a single-file dataset: trained on, never scored
                continue
        if not kept:
            skipped.append(name)
            continue
        specs = kept
        records = records[: recipe.eval.max_samples]
        row: dict[str, Any] = {"task": name, "n": len(records), "scoring": recipe.eval.scoring}
        for label, model in (("before", reference), ("after", candidate)):
            runner = Runner(
                model, processor, batch_size=recipe.eval.batch_size,
                max_new_tokens=recipe.eval.max_new_tokens,
                max_image_pixels=recipe.train.max_image_pixels, max_length=recipe.train.max_length,
            )  # fmt: skip
            scored = score_task_predictions(
                name, records, runner.run(records, recipe.eval.scoring),
                split=",".join(s.eval_split for s in specs),
                findings=recipe.eval.finding_keywords or None,
            )  # fmt: skip
            row["metric"], row[label] = scored.headline_metric, scored.headline
            if scored.headline is None:  # undefined, never read as 0: say why
                row[f"{label}_reason"] = scored.headline_reason
            for kind, scores in scored.by_type.items():  # each record type's own headline
                part = row.setdefault("parts", {}).setdefault(f"{kind}.{scores.headline}", {})
                part[label] = scores.headline_value
        rows.append(row)
    note = f"no eval split for: {', '.join(skipped)}" if skipped else None
    return rows, note


def _unwrap_peft(model: Any) -> Any:
    """A PeftModel's transformers model (its LoRA layers in place), else the model itself."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model

"""Calibration records and the mean gate of every expert over their tokens."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medqwen_cli.adapters import adapter_layers
from medqwen_cli.bundle import Bundle
from medqwen_cli.merge.core import HELD_OUT_SHARE, MergeError, ProgressFn
from medqwen_cli.recipe import Recipe


def calibration_tasks(
    bundle: Bundle, recipe: Recipe, version: str, given: Sequence[str] | None
) -> list[str]:
    """The tasks given, else the version's lineage tasks, else the recipe's data.datasets."""
    if given:
        names = list(dict.fromkeys(given))
    else:
        names = list(dict.fromkeys(bundle.read_version_info(version).lineage_tasks))
        names = names or [d.display_name for d in recipe.data.datasets]
    if not names:
        raise MergeError(
            f"no calibration data: version {version} was trained on no task and the recipe has "
            "no data.datasets",
            "name one with --calibration TASK (a recipe task, a dataset path or builtin:NAME)",
        )
    for name in names:
        recipe.task_datasets(name)  # an unknown task fails here, before any model loads
    return names


def calibration_records(
    recipe: Recipe, tasks: Sequence[str], samples: int, *, data_dir: Path
) -> tuple[list, list]:
    """(fit, held-out) training-split records: drawn evenly over the tasks, seeded, 20% held
    (built-in data generated under `data_dir`, `Settings.data_cache_dir`)."""
    from medqwen_cli.data.readers import load_records

    pools = []
    for name in tasks:
        records = []
        for spec in recipe.task_datasets(name):
            loaded = load_records(
                spec, spec.split, cache_dir=data_dir,
                max_image_pixels=recipe.train.max_image_pixels,
            )  # fmt: skip
            records += loaded[: spec.max_samples]
        random.Random(f"medqwen-merge:{name}").shuffle(records)
        pools.append(records)
    chosen: list = []
    while len(chosen) < samples and any(pools):  # round robin over the tasks
        for pool in pools:
            if pool and len(chosen) < samples:
                chosen.append(pool.pop(0))
    held = max(1, round(HELD_OUT_SHARE * len(chosen)))
    if len(chosen) - held < 1:
        raise MergeError(
            f"calibration tasks {', '.join(tasks)} have {len(chosen)} training record(s); at least "
            "2 are needed (one to fit the mean gates, one held out)",
            "name tasks with more data through --calibration",
        )
    return chosen[:-held], chosen[-held:]


def collator(processor: Any, recipe: Recipe) -> Any:
    from medqwen_cli.data.collate import Collator

    return Collator(
        processor, max_image_pixels=recipe.train.max_image_pixels,
        max_length=recipe.train.max_length,
    )  # fmt: skip


def batches(records: Sequence, collate: Any, recipe: Recipe) -> list[dict[str, Tensor]]:
    size = recipe.eval.batch_size
    out = []
    for i in range(0, len(records), size):
        batch = collate(records[i : i + size])
        batch.pop("labels", None)
        out.append(batch)
    return out


def to_model(batch: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    device, dtype = model.device, model.dtype
    return {
        k: v.to(device, dtype) if k == "pixel_values" else v.to(device) for k, v in batch.items()
    }


def gate_key(layer: str, branch: int | None = None) -> str:
    """The key of a set of experts in `mean_gates`: the layer's canonical name for its own
    experts, `<layer>.branches.<j>` for its protected branch j (the names of their tensors)."""
    return layer if branch is None else f"{layer}.branches.{branch}"


def expert_sets(model: Any) -> list[tuple[str, Any]]:
    """(gate key, experts) of every set of experts: each adapter layer's own, then its
    protected branches (same method, E and k as the layer; their own routers and scales)."""
    out = []
    for name, layer in adapter_layers(model):
        out.append((gate_key(name), layer))
        out += [(gate_key(name, j), branch) for j, branch in enumerate(layer.branches)]
    return out


@torch.no_grad()
def mean_gates(
    model: Any, batches: Sequence[dict[str, Tensor]], progress: ProgressFn | None = None
) -> dict[str, Tensor]:
    """Mean routing weight of each expert, per set of experts (a layer's own, keyed by the
    layer's name, and each protected branch, keyed `<layer>.branches.<j>`), over non-padding
    tokens: (E,) float64.

    Gates are read from each router's output by a forward hook (0 for experts outside the
    top-k); the padding mask is the one the model-level hook gives every adapter layer (and the
    layer to its branches; a mask of another shape, e.g. vision patches, is ignored and every
    position counts). Sets without a router (lora, pissa) get [1.0].
    """
    sums: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    handles = []
    for key, experts in expert_sets(model):
        if experts.router is None:
            continue

        def hook(_module: Any, _args: Any, routing: Any, key: str = key, experts: Any = experts):
            gates = routing.gates.detach().double().reshape(-1, experts.experts)  # (N, E)
            mask = experts.token_mask
            if mask is not None and tuple(mask.shape) == tuple(routing.gates.shape[:-1]):
                keep = mask.reshape(-1).to(gates.device, torch.float64)  # (N,)
            else:
                keep = gates.new_ones(gates.shape[0])  # (N,)
            kept = torch.where(keep[:, None] > 0, gates, torch.zeros_like(gates))  # NaN-safe
            sums[key] = sums.get(key, 0) + (kept * keep[:, None]).sum(0).cpu()
            counts[key] = counts.get(key, 0) + keep.sum().cpu()

        handles.append(experts.router.register_forward_hook(hook))
    try:
        if progress is not None:  # the phase starts: a plain log line says so at once
            progress(0, len(batches), "calibrating mean gates")
        for i, batch in enumerate(batches):
            model(**to_model(batch, model))
            if progress is not None:
                progress(i + 1, len(batches), "calibrating mean gates")
    finally:
        for handle in handles:
            handle.remove()
    means = {key: sums[key] / counts[key].clamp_min(1.0) for key in sums}
    for key, experts in expert_sets(model):
        means.setdefault(key, torch.ones(experts.experts, dtype=torch.float64))
    return means

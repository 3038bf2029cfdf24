"""What `medqwen inspect` shows, read without torch: manifest, parameter counts, integrity."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from medqwen_cli._io import checkpoint_files, numel, tensor_shapes
from medqwen_cli.bundle import objects
from medqwen_cli.bundle.manifest import INIT_FILE
from medqwen_cli.bundle.store import Bundle
from medqwen_cli.errors import BundleError


def count_parameters(path: Path) -> int:
    """Number of elements stored in a safetensors file, from its header only."""
    return numel(tensor_shapes(path).values())


def summarize(bundle: Bundle, version: str | None = None) -> dict[str, Any]:
    """What `medqwen inspect` shows: manifest, head, parameter counts, integrity problems."""
    m = bundle.manifest
    summary: dict[str, Any] = {
        "path": str(bundle.root),
        "format_version": m.format_version,
        "medqwen_version": m.medqwen_version,
        "created": m.created,
        "base": m.base,
        "method": m.adapter_settings,
        "versions": len(m.versions),
        "head": m.head,
        "tasks_seen": m.tasks_seen,
    }
    damaged = bundle.damaged_files()
    summary["damaged"] = damaged  # relative path -> problem; inspect exits 1 when not empty
    summary["problems"] = [f"{k}: {v}" for k, v in damaged.items()] + bundle.unpublished_notes()
    if m.versions:
        vdir = bundle.version_dir(version)
        summary["version"] = vdir.name
        summary["trainable_parameters"] = summary["adapted_layers"] = None
        with contextlib.suppress(BundleError):  # a damaged adapter is already in `damaged`
            adapter = objects.shapes(bundle, vdir.name)
            summary["trainable_parameters"] = numel(adapter.values())
            own = [k for k in adapter if k.endswith(".lora_A") and ".branches." not in k]
            summary["adapted_layers"] = len(own)
            summary.update(_branches(adapter))
    if (bundle.root / INIT_FILE).is_file():
        with contextlib.suppress(BundleError):
            summary["frozen_init_parameters"] = count_parameters(bundle.root / INIT_FILE)
    base_path = Path(str(m.base.get("path", "")))
    if base_path.is_dir():
        try:
            summary["base_parameters"] = sum(
                count_parameters(f) for f in checkpoint_files(base_path)
            )
        except Exception:  # the base may have moved; counts are informative only
            summary["base_parameters"] = None
    trained = summary.get("trained_in_version") or summary.get("trainable_parameters")
    if summary.get("base_parameters") and trained:
        summary["trainable_percent"] = 100.0 * trained / summary["base_parameters"]
    return summary


def _branches(adapter: dict[str, list[int]]) -> dict[str, Any]:
    """Protected branches of a version's adapter: how many, and the tensors' size of each."""
    sizes: dict[int, int] = {}
    for key, shape in adapter.items():
        match = re.search(r"\.branches\.(\d+)\.", key)
        if match:
            index = int(match.group(1))
            sizes[index] = sizes.get(index, 0) + numel([shape])
    if not sizes:
        return {}
    last = max(sizes)
    trained = [
        shape for key, shape in adapter.items()
        if f".branches.{last}." in key and key.endswith((".lora_A", ".lora_B", ".router.weight"))
    ]  # fmt: skip
    return {
        "branches": len(sizes),
        "branch_parameters": [sizes[i] for i in sorted(sizes)],
        "trained_in_version": numel(trained),  # the newest branch: the rest was frozen
    }

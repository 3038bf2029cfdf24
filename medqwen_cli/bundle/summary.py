"""What `medqwen inspect` shows, read without torch: manifest, parameter counts, integrity."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from medqwen_cli._io import checkpoint_files, numel, tensor_shapes
from medqwen_cli.bundle.manifest import ADAPTER_FILE, INIT_FILE
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
            adapter = tensor_shapes(vdir / ADAPTER_FILE)
            summary["trainable_parameters"] = numel(adapter.values())
            summary["adapted_layers"] = sum(1 for k in adapter if k.endswith(".lora_A"))
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
    if summary.get("base_parameters") and summary.get("trainable_parameters"):
        summary["trainable_percent"] = (
            100.0 * summary["trainable_parameters"] / summary["base_parameters"]
        )
    return summary

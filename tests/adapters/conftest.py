"""Tiny Qwen2-VL / Qwen2.5-VL models built from config (no download) and small adapter settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from medqwen_cli.recipe import AdapterConfig

VOCAB = 300
SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # the model's and its text's
TOKEN_IDS = dict(
    **SPECIAL_IDS,
    image_token_id=297,
    video_token_id=298,
    vision_start_token_id=295,
    vision_end_token_id=296,
)
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    **SPECIAL_IDS,
)


def build_model(kind: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model in eval mode; the same seed gives the same weights."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "qwen2-vl":
        vision = dict(depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2)
        config = tf.Qwen2VLConfig(text_config=TEXT, vision_config=vision, **TOKEN_IDS)
        model = tf.Qwen2VLForConditionalGeneration(config)
    else:
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1], window_size=56,
        )  # fmt: skip
        config = tf.Qwen2_5_VLConfig(text_config=TEXT, vision_config=vision, **TOKEN_IDS)
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    return model.eval()


@pytest.fixture(params=["qwen2-vl", "qwen2.5-vl"])
def model_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_model(model_kind: str) -> Callable[..., nn.Module]:
    return lambda seed=0: build_model(model_kind, seed)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Two text-only sequences of 7 tokens; the second is left-padded by 2."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 290, (2, 7), generator=gen)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, :2] = 0
    input_ids[1, :2] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _small_cfg(**overrides: object) -> AdapterConfig:
    settings: dict[str, object] = dict(experts=4, top_k=2, rank=8)
    settings.update(overrides)
    return AdapterConfig(**settings)


@pytest.fixture
def small_cfg() -> Callable[..., AdapterConfig]:
    """E=4 experts of rank 2 (r=8) fit every layer of the tiny models (min(m, n) >= 32)."""
    return _small_cfg

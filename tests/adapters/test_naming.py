"""Canonical names across transformers versions, checkpoint layouts and wrappers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open
from torch import nn

from medqwen_cli.adapters import (
    canonical_from_checkpoint_key,
    canonical_module_name,
    layer_kind,
    linear_shapes,
)

Q = "language_model.layers.3.self_attn.q_proj"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("model.language_model.layers.3.self_attn.q_proj", Q),  # transformers 5 modules
        ("model.layers.3.self_attn.q_proj", Q),  # older transformers modules
        (Q, Q),  # already canonical
        ("model.visual.blocks.0.attn.qkv", "visual.blocks.0.attn.qkv"),
        ("visual.blocks.0.attn.qkv", "visual.blocks.0.attn.qkv"),
        ("model.visual.merger.mlp.0", "visual.merger.mlp.0"),
        ("lm_head", "lm_head"),
        ("model.embed_tokens", "language_model.embed_tokens"),
        ("module.model.language_model.layers.3.self_attn.q_proj", Q),  # DDP
        ("_orig_mod.model.layers.3._checkpoint_wrapped_module.self_attn.q_proj", Q),
    ],
)
def test_canonical_module_name(raw: str, canonical: str) -> None:
    assert canonical_module_name(raw) == canonical


def test_canonical_from_checkpoint_key() -> None:
    assert canonical_from_checkpoint_key("model.layers.3.self_attn.q_proj.weight") == Q
    assert (
        canonical_from_checkpoint_key("visual.blocks.1.mlp.fc2.weight") == "visual.blocks.1.mlp.fc2"
    )
    assert canonical_from_checkpoint_key("lm_head.weight") == "lm_head"
    assert canonical_from_checkpoint_key("model.layers.3.self_attn.q_proj.bias") is None


def test_layer_kind() -> None:
    assert layer_kind(Q) == "language_model.layers.*.self_attn.q_proj"
    assert layer_kind("visual.merger.mlp.0") == "visual.merger.mlp.*"


def test_checkpoint_and_module_layouts_agree(
    make_model: Callable[..., nn.Module], tmp_path: Path
) -> None:
    """save_pretrained writes the published layout; both map to the same canonical names."""
    model = make_model()
    model.save_pretrained(tmp_path)
    shapes, raw_keys = {}, set()
    for file in tmp_path.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                raw_keys.add(key)
                name = canonical_from_checkpoint_key(key)
                if name is not None:
                    shapes[name] = tuple(f.get_slice(key).get_shape())
    # The published layout, not the loaded one: the mapping below is really exercised.
    assert "model.layers.0.self_attn.q_proj.weight" in raw_keys
    assert "visual.blocks.0.attn.qkv.weight" in raw_keys
    modules = linear_shapes(model)
    assert any(k.startswith("language_model.layers.0.") for k in modules)
    assert any(k.startswith("visual.blocks.0.") for k in modules)
    for name, shape in modules.items():
        if name == "lm_head" and name not in shapes:
            continue  # tied to the embeddings, not stored
        assert shapes.get(name) == shape, name

"""Canonical module names, independent of the transformers version and of the on-disk layout.

The same Qwen2-VL linear layer has three spellings:

    loaded, transformers >= 4.52 / 5   model.language_model.layers.3.self_attn.q_proj
    loaded, older transformers         model.layers.3.self_attn.q_proj
    safetensors checkpoint key         model.layers.3.self_attn.q_proj.weight

and the vision tower is `model.visual.blocks.N...` (loaded) or `visual.blocks.N...` (checkpoint).
Every adapter key, target pattern and report uses the canonical form

    language_model.layers.3.self_attn.q_proj,   visual.blocks.0.attn.qkv,   lm_head

Wrapper components added by DDP (`module.`), torch.compile (`_orig_mod.`), FSDP and activation
checkpointing are dropped, so a prepared model names its layers like the bare one.
"""

from __future__ import annotations

import re

_WRAPPERS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_INDEX = re.compile(r"\.\d+(?=\.|$)")


def canonical_module_name(module_name: str) -> str:
    """`model.language_model.layers.0.mlp.up_proj` / `model.layers.0.mlp.up_proj` ->
    `language_model.layers.0.mlp.up_proj`; `model.visual.X` -> `visual.X`; others unchanged."""
    parts = [p for p in module_name.split(".") if p and p not in _WRAPPERS]
    if parts[:1] == ["module"]:  # DistributedDataParallel
        parts = parts[1:]
    if parts[:1] == ["model"]:
        rest = parts[1:]
        # transformers >= 4.52 nests model.language_model.* and model.visual.*; the older
        # layout and the checkpoint keys put the text stack directly under model.*
        nested = rest[:1] in (["language_model"], ["visual"])
        parts = rest if nested else ["language_model", *rest]
    return ".".join(parts)


def canonical_from_checkpoint_key(tensor_key: str) -> str | None:
    """Module name of a checkpoint `.weight` key (`model.layers.0.mlp.up_proj.weight` ->
    `language_model.layers.0.mlp.up_proj`); None for other tensors (biases, norms' extras)."""
    if not tensor_key.endswith(".weight"):
        return None
    return canonical_module_name(tensor_key[: -len(".weight")])


def layer_kind(canonical_name: str) -> str:
    """The name with layer indices starred: `language_model.layers.*.self_attn.q_proj`."""
    return _INDEX.sub(".*", canonical_name)

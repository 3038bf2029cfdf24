"""Base models: presets build offline and deterministically; unknown bases say where we looked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medqwen_cli import modeling
from medqwen_cli.errors import BaseModelError
from medqwen_cli.settings import Settings


@pytest.mark.parametrize("name", modeling.TINY_PRESETS)
def test_preset_loads_offline_and_runs_an_image(name: str) -> None:
    import numpy as np
    import torch
    from PIL import Image

    model, processor, info = modeling.load_base(name, dtype="float32", device="cpu")
    assert info.source == "preset" and info.model_type in modeling.SUPPORTED_TYPES
    assert not any(p.requires_grad for p in model.parameters())
    image = Image.fromarray((np.random.default_rng(0).random((56, 84, 3)) * 255).astype("uint8"))
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Is there a nodule?"}],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    assert "mm_token_type_ids" in batch
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == len(processor.tokenizer) and torch.isfinite(logits).all()


def test_preset_is_deterministic(tmp_path: Path) -> None:
    modeling.build_preset("tiny-qwen2-vl", tmp_path / "a")
    modeling.build_preset("tiny-qwen2-vl", tmp_path / "b")
    assert modeling.fingerprint(tmp_path / "a") == modeling.fingerprint(tmp_path / "b")
    modeling.build_preset("tiny-qwen2-vl", tmp_path / "c", seed=1)
    assert modeling.fingerprint(tmp_path / "c") != modeling.fingerprint(tmp_path / "a")


def test_local_directory_loads_through_the_same_path(tmp_path: Path) -> None:
    src = modeling.ensure_preset("tiny-qwen2-vl")
    shutil.copytree(src, tmp_path / "mymodel")
    model, processor, info = modeling.load_base(str(tmp_path / "mymodel"))
    assert (
        info.source == "local"
        and info.fingerprint == modeling.resolve_base("tiny-qwen2-vl").fingerprint
    )
    assert processor.image_token == "<|image_pad|>"


def test_fingerprint_sees_changed_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(modeling.ensure_preset("tiny-qwen2-vl"), tmp_path / "m")
    before = modeling.fingerprint(tmp_path / "m")
    tensors = load_file(tmp_path / "m/model.safetensors")
    key = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[key] = tensors[key] + torch.ones_like(tensors[key])
    save_file(tensors, tmp_path / "m/model.safetensors", metadata={"format": "pt"})
    assert modeling.fingerprint(tmp_path / "m") != before


def test_unknown_base_says_where_it_looked() -> None:
    with pytest.raises(BaseModelError) as err:
        modeling.resolve_base("Qwen2-VL")  # alias, not in this machine's HF cache
    assert "Qwen/Qwen2-VL-2B-Instruct" in err.value.message
    assert "Hugging Face cache" in err.value.message and "tiny-qwen2-vl" in err.value.hint
    with pytest.raises(BaseModelError, match="aliases"):
        modeling.resolve_base("qwen-vl-typo")


def test_hub_id_found_in_a_local_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub id is served from the HF cache layout (models--org--name/snapshots/REV) offline."""
    hub = tmp_path / "hub"
    snap = hub / "models--Qwen--Qwen2-VL-2B-Instruct" / "snapshots" / ("a" * 40)
    shutil.copytree(modeling.ensure_preset("tiny-qwen2-vl"), snap)
    (hub / "models--Qwen--Qwen2-VL-2B-Instruct" / "refs").mkdir()
    (hub / "models--Qwen--Qwen2-VL-2B-Instruct" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    info = modeling.resolve_base("Qwen2-VL")
    assert info.source == "hub-cache" and info.model_id == "Qwen/Qwen2-VL-2B-Instruct"


def test_bad_local_directories(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no config.json"):
        modeling.resolve_base(str(tmp_path / "empty"))
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BaseModelError, match="supports qwen2_vl"):
        modeling.resolve_base(str(tmp_path / "llama"))


def test_truncated_weights_fail_clearly(tmp_path: Path) -> None:
    shutil.copytree(modeling.ensure_preset("tiny-qwen2-vl"), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BaseModelError):
        modeling.load_base(str(tmp_path / "m"))


def test_presets_build_under_the_cache_they_are_given(tmp_path: Path) -> None:
    path = modeling.ensure_preset("tiny-qwen2-vl", cache_dir=tmp_path)
    assert path.parent == tmp_path / "presets" and (path / "config.json").is_file()
    info = modeling.resolve_base("tiny-qwen2-vl", cache_dir=tmp_path)
    assert (
        Path(info.path) == path
        and info.fingerprint == modeling.resolve_base("tiny-qwen2-vl").fingerprint
    )  # same seed, same files, whichever cache
    settings = Settings(bundle=None, cache_dir=tmp_path)
    assert modeling.data_cache_dir(settings) == tmp_path / "data"


def test_the_preset_registry_imports_no_model_code() -> None:
    probe = "import json, sys, medqwen_cli.presets; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"torch", "transformers", "medqwen_cli.modeling"}


def test_the_registry_builds_each_preset_with_its_module_and_version(tmp_path: Path) -> None:
    from medqwen_cli.presets import REGISTRY, nano, tiny

    assert modeling.PRESETS == tuple(REGISTRY) == (*tiny.NAMES, *nano.NAMES)
    assert {name: p.version for name, p in REGISTRY.items()} == modeling.PRESET_VERSIONS
    assert REGISTRY[nano.NAME].build is nano.build and REGISTRY[tiny.NAMES[0]].build is tiny.build
    with pytest.raises(BaseModelError, match="unknown preset"):
        modeling.build_preset("no-such-preset", tmp_path)

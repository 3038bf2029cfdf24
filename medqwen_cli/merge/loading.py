"""Loading exports back: manifests, `load_merged`, and each mode the way a user loads it."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from medqwen_cli.adapters.naming import canonical_module_name
from medqwen_cli.bundle import sha256_file
from medqwen_cli.merge.core import (
    ADAPTER_FILE,
    FORMAT,
    MANIFEST_FILE,
    PEFT_WEIGHTS,
    TENSOR_NAMES,
    MergeError,
)
from medqwen_cli.modeling import (
    SUPPORTED_TYPES,
    BaseInfo,
    load_base,
    resolve_base,
    select_device,
    select_dtype,
)
from medqwen_cli.recipe import AdapterConfig


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path).expanduser() / MANIFEST_FILE
    if not file.is_file():
        raise MergeError(
            f"{file.parent} is not a medqwen export (no {MANIFEST_FILE})",
            "make one with `medqwen merge BUNDLE --out DIR`",
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"cannot read {file}: {exc}", "re-run `medqwen merge`") from None
    if manifest.get("format", 0) > FORMAT:
        raise MergeError(
            f"{file} has format {manifest.get('format')}, newer than this medqwen reads ({FORMAT})",
            "upgrade medqwen: pip install -U medqwen-cli",
        )
    return manifest


def load_merged(path: str | os.PathLike[str], *, dtype: str = "auto", device: str = "auto") -> Any:
    """The model of an export made by `medqwen merge`, in eval mode.

    routed: the base's transformers class with medqwen's routed layers in place (exact);
    dense: the plain transformers class; peft: the base with the PEFT adapter (a PeftModel;
    needs `peft`). The processor: `medqwen_cli.modeling.load_processor(path)` (routed, dense)
    or the base's (peft).
    """
    path = Path(path).expanduser().resolve()
    model, _ = load_export(path, read_manifest(path), dtype=dtype, device=device)
    return model


def load_export(
    path: Path,
    manifest: dict[str, Any],
    *,
    dtype: str,
    device: str,
    measuring: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Any, str]:
    """(model, how it was loaded). peft: a PeftModel; when `measuring` without peft installed,
    the base with the adapter's factors applied by `_apply_lora` (the same sum PEFT computes).
    `cache_dir`: where a preset base of a peft export is found (default: the settings' cache)."""
    import transformers

    from medqwen_cli.base_files import quiet_transformers

    quiet_transformers()
    device = select_device(device)
    torch_dtype = select_dtype(dtype, device)
    mode = manifest["mode"]
    model_type = manifest["base"]["model_type"]
    cls = getattr(transformers, SUPPORTED_TYPES[model_type])
    if mode == "routed":
        model = _load_routed(path, manifest, cls, torch_dtype)
        how = "medqwen_cli.load_merged (transformers class + medqwen routed layers)"
    elif mode == "dense":
        model = cls.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
        how = f"transformers {cls.__name__}.from_pretrained"
    else:
        base, _, _ = load_base(_export_base(manifest, cache_dir), dtype=dtype, device=device)
        try:
            import peft
        except ImportError:
            if not measuring:
                raise MergeError(
                    "loading a --mode peft export needs the `peft` package, which is not installed",
                    "pip install peft (or use --mode dense, which needs nothing beyond transformers)",
                ) from None
            return _apply_lora(base, path), "base + LoRA factors by medqwen (peft not installed)"
        with warnings.catch_warnings():
            # peft asks every model `is_gradient_checkpointing`, a property transformers 5
            # deprecated (FutureWarning on each read); only that one warning is hidden
            warnings.filterwarnings(
                "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
            )
            model = peft.PeftModel.from_pretrained(base, str(path), is_trainable=False)
        how = f"peft {peft.__version__} PeftModel.from_pretrained on the base"
    model.to(device).eval().requires_grad_(False)
    return model, how


def _apply_lora(model: Any, path: Path) -> Any:
    """Forward hooks adding B (A x) to each target of a peft export (scaling 1: alpha = r)."""
    from medqwen_cli.bundle import load_tensors

    tensors = load_tensors(path / PEFT_WEIGHTS)
    for name, module in model.named_modules():
        key = f"base_model.model.{name}"
        if f"{key}.lora_A.weight" not in tensors:
            continue
        a = tensors[f"{key}.lora_A.weight"].to(module.weight.device)  # (k, n)
        b = tensors[f"{key}.lora_B.weight"].to(module.weight.device)  # (m, k)

        def hook(_m: Any, args: tuple, out: Tensor, a: Tensor = a, b: Tensor = b) -> Tensor:
            return out + ((args[0].to(a.dtype) @ a.t()) @ b.t()).to(out.dtype)

        module.register_forward_hook(hook)
    return model.eval().requires_grad_(False)


def _export_base(manifest: dict[str, Any], cache_dir: Path | None = None) -> BaseInfo:
    base = manifest["base"]
    where = base["path"] if Path(base["path"]).is_dir() else base["name"]
    info = resolve_base(where, base.get("revision"), cache_dir=cache_dir)
    if info.fingerprint != base["fingerprint"]:
        raise MergeError(
            f"base model at {info.path} has fingerprint {info.fingerprint}, the export was made "
            f"on {base['fingerprint']} ({base['model_id']})",
            "put the original base model back where the manifest says",
        )
    return info


def _load_routed(path: Path, manifest: dict[str, Any], cls: Any, torch_dtype: Any) -> Any:
    """The standard class from the linked base shards, then medqwen's routed layers injected
    with the adapter tensors (checksum verified): the layers' own frozen init, then the
    protected branches of the version (if any) rebuilt from their tensors, then every trainable
    tensor, as `load_adapted` does with a bundle."""
    from medqwen_cli.adapters import inject_adapters, load_adapter_state
    from medqwen_cli.adapters.branches import add_stored_branches
    from medqwen_cli.bundle import load_tensors

    adapter = path / ADAPTER_FILE
    expected = manifest["files"].get(ADAPTER_FILE)
    if not adapter.is_file() or sha256_file(adapter) != expected:
        raise MergeError(
            f"{adapter} is missing or does not match its checksum in {MANIFEST_FILE}",
            "re-run `medqwen merge` to rebuild the export",
        )
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    settings = raw.pop("medqwen_routed")
    raw.pop("auto_map", None)
    raw["model_type"], raw["architectures"] = (
        settings["base_model_type"],
        settings["base_architectures"],
    )
    config = cls.config_class.from_dict(raw)
    # The index lists the adapter tensors too; the plain class reports them as unused.
    model = cls.from_pretrained(str(path), config=config, dtype=torch_dtype, local_files_only=True)
    tensors = {_canonical_key(k): v for k, v in load_tensors(adapter).items()}
    trainable = ("lora_A", "lora_B", "router.weight")
    # A branch's tensors, frozen ones included, are version state (`<layer>.branches.<i>.*`).
    version = {k: v for k, v in tensors.items() if k.endswith(trainable) or _BRANCH.search(k)}
    init = {k: v for k, v in tensors.items() if k not in version}
    cfg = AdapterConfig.model_validate(manifest["source"]["method"])
    inject_adapters(model, cfg, init)
    add_stored_branches(model, version, cfg)
    load_adapter_state(model, version)
    return model


_BRANCH = re.compile(r"\.branches\.\d+\.")
_NAMES = "|".join(map(re.escape, TENSOR_NAMES))
_KEY = re.compile(rf"^(?P<layer>.+?)(?P<branch>\.branches\.\d+)?\.(?P<name>{_NAMES})$")


def _canonical_key(key: str) -> str:
    """`model.layers.0.mlp.up_proj.router.weight` ->
    `language_model.layers.0.mlp.up_proj.router.weight`, and
    `model.layers.0.mlp.up_proj.branches.1.lora_A` ->
    `language_model.layers.0.mlp.up_proj.branches.1.lora_A` (the layer's part made canonical)."""
    match = _KEY.match(key)
    if match is None:
        raise MergeError(f"unexpected tensor {key} in {ADAPTER_FILE}", "re-run `medqwen merge`")
    layer, branch, name = match.group("layer", "branch", "name")
    return f"{canonical_module_name(layer)}{branch or ''}.{name}"

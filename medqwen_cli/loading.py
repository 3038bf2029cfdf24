"""Apply a bundle version to its base model: the one loader train, evaluate and merge share.

Steps: find the base the bundle was made on (preset, local directory or HF cache), check its
fingerprint, load it, inject adapters with the bundle's adapter settings (the `adapter`
section of the recipe in `bundle.json`, stored once) and exact frozen init
(`init.safetensors`, never a fresh SVD), then load the version's trainable tensors. Missing or
unexpected keys, a shape mismatch or a different base fingerprint are errors; so is any file of
the version's lineage that is missing or fails its checksum (checked before the base loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medqwen_cli.adapters.config import AdapterConfig, refuse_fixed_changes
from medqwen_cli.bundle import Bundle
from medqwen_cli.errors import BaseModelError, BundleError
from medqwen_cli.modeling import BaseInfo, load_base, resolve_base
from medqwen_cli.recipe import Recipe


@dataclass
class AdaptedModel:
    model: Any
    processor: Any
    base: BaseInfo
    version: str
    report: Any  # adapters.InjectionReport


def adapter_config(bundle: Bundle) -> AdapterConfig:
    """The bundle's adapter settings (fixed at init): its stored recipe's `adapter`."""
    return AdapterConfig.model_validate(bundle.manifest.adapter_settings)


def bundle_recipe(bundle: Bundle) -> Recipe:
    """The recipe stored at init (paths already resolved; its `adapter` is `adapter_config`)."""
    return Recipe.model_validate(bundle.manifest.stored_recipe())


def check_adapter(bundle: Bundle, adapter: AdapterConfig) -> None:
    """Refuse adapter settings that change a field fixed when the bundle was made."""
    refuse_fixed_changes(adapter, bundle.manifest.adapter_settings)


def bundle_base(bundle: Bundle, *, cache_dir: Path | None = None) -> BaseInfo:
    """Find the bundle's base again and check it is the same model (fingerprint); a preset base
    is looked up (or rebuilt) under `cache_dir` (default: the settings' cache)."""
    base = bundle.manifest.base
    candidates = []
    if base.get("source") == "local" and base.get("path"):
        candidates.append(base["path"])
    candidates.append(base.get("name") or base.get("model_id"))
    last_error: BaseModelError | None = None
    for candidate in candidates:
        if candidate is None or (base.get("source") == "local" and not Path(candidate).exists()):
            continue
        try:
            info = resolve_base(candidate, base.get("revision"), cache_dir=cache_dir)
        except BaseModelError as exc:
            last_error = exc
            continue
        bundle.check_base(info.fingerprint)
        return info
    if last_error is not None:
        raise last_error
    raise BundleError(
        f"the bundle's base model ({base.get('model_id')}) is no longer at {base.get('path')}",
        "put the base model back there, or point MEDQWEN_BUNDLE at a bundle made on an available base",
    )


def load_adapted(
    bundle: Bundle,
    version: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    max_pixels: int | None = None,
    adapter: AdapterConfig | None = None,
    cache_dir: Path | None = None,
) -> AdaptedModel:
    """The base model with the adapters of `version` (default head) in place, in eval mode.

    `adapter` (default: the bundle's) may change the training fields (dropout, dropout_masks,
    balance_loss) of the bundle's settings, never a field fixed at init (see `check_adapter`).
    `cache_dir`: where a preset base is found (see `bundle_base`).
    """
    from medqwen_cli.adapters import inject_adapters, load_adapter_state
    from medqwen_cli.adapters.branches import add_stored_branches

    if adapter is None:
        adapter = adapter_config(bundle)
    else:
        check_adapter(bundle, adapter)
    vid = bundle.resolve_version(version)
    # Both verified before the base loads: init.safetensors and every file of the lineage
    # (Bundle.check_version), so a damaged bundle fails at once.
    trained = bundle.read_adapter(vid)
    init = bundle.read_init()
    info = bundle_base(bundle, cache_dir=cache_dir)
    model, processor, info = load_base(info, dtype=dtype, device=device, max_pixels=max_pixels)
    report = inject_adapters(model, adapter, init)
    add_stored_branches(model, trained, adapter)  # a protected version's branches, if any
    load_adapter_state(model, trained)
    model.eval()
    return AdaptedModel(model, processor, info, vid, report)

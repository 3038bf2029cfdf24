"""A version's adapter stored once per tensor: what it changed, and its parent for the rest.

A later task often changes only part of the adapter: with protect, every tensor trained before
is frozen and the run adds one branch. Storing every tensor again would make a bundle grow with
the square of the number of tasks. So `append_version` writes to a version's
adapter.safetensors only the tensors that differ from its parent's (bit for bit) and records the
parent as `inherits` in version.json; reading the version (`resolve`) takes the parent's
tensors, resolved the same way, and lays its own file over them. Every file read is one of the
version's lineage, which `check_version` verifies against its sha256 before any use, so a
version still loads and verifies on its own terms; nothing is ever rewritten. A version stores
every tensor when it lacks one of its parent's, or shares none (an ordinary training run
changes every trained tensor).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medqwen_cli._io import load_tensors, tensor_shapes
from medqwen_cli.bundle.manifest import ADAPTER_FILE, VERSION_FILE, VersionInfo
from medqwen_cli.errors import BundleError

if TYPE_CHECKING:
    import torch


def resolve(bundle: Any, version: str) -> dict[str, torch.Tensor]:
    """Every adapter tensor of `version`: its inherited chain, oldest first, then its own."""
    out: dict[str, torch.Tensor] = {}
    for vid in reversed(_chain(bundle, version)):
        out.update(load_tensors(bundle.version_dir(vid) / ADAPTER_FILE))
    return out


def shapes(bundle: Any, version: str) -> dict[str, list[int]]:
    """Every adapter tensor's shape of `version`, from the files' headers (no tensor read)."""
    out: dict[str, list[int]] = {}
    for vid in reversed(_chain(bundle, version)):
        out.update(tensor_shapes(bundle.version_dir(vid) / ADAPTER_FILE))
    return out


def new_tensors(
    adapter: dict[str, torch.Tensor], parent: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """The tensors of `adapter` a version must store when its parent's are `parent`, or None
    when it stores them all: it lacks a parent tensor, or shares none with the parent."""
    import torch

    if not parent or not set(parent) <= set(adapter):
        return None
    own = {
        k: v
        for k, v in adapter.items()
        if k not in parent
        or parent[k].shape != v.shape
        or parent[k].dtype != v.dtype
        or not torch.equal(parent[k], v.detach().to(parent[k].device))
    }
    return own if len(own) < len(adapter) else None


def _chain(bundle: Any, version: str) -> list[str]:
    """`version`, then the version it inherits from, and so on (version.json read as it is:
    the callers verify, `read_adapter` through `check_version`)."""
    chain = [version]
    while bundle.entry(chain[-1]).parent is not None:  # a root version inherits nothing
        path = bundle.version_dir(chain[-1]) / VERSION_FILE
        try:
            inherits = VersionInfo.model_validate_json(path.read_text(encoding="utf-8")).inherits
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise BundleError(
                f"cannot read {path}: {str(exc)[:120]}", "see `medqwen inspect`"
            ) from None
        if inherits is None:
            break
        chain.append(inherits)
    return chain

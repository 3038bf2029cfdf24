"""Versioned bundles: every version of one adapter lineage, immutable and checksummed.

manifest   the JSON documents (bundle.json, version.json) as pydantic models, file names
lock       the one-writer lock (`.lock`)
store      `Bundle`: open, verify, append versions and evaluations; `find_bundle`
summary    `summarize`: what `medqwen inspect` shows, without torch

The file helpers (atomic writes, sha256, safetensors) live in `medqwen_cli._io` and are
re-exported here for the modules that import them from the bundle.
"""

from medqwen_cli._io import (
    TensorWriter,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    save_tensors,
    sha256_file,
    tensor_shapes,
)
from medqwen_cli.bundle.lock import bundle_lock
from medqwen_cli.bundle.manifest import (
    ADAPTER_FILE,
    BASE_VERSION,
    EVALS_FILE,
    FORMAT_VERSION,
    INIT_FILE,
    LOCK_FILE,
    MANIFEST,
    VERSION_FILE,
    Manifest,
    VersionEntry,
    VersionInfo,
)
from medqwen_cli.bundle.store import Bundle, find_bundle, is_bundle, refuse_existing
from medqwen_cli.bundle.summary import summarize

__all__ = [
    "ADAPTER_FILE",
    "BASE_VERSION",
    "EVALS_FILE",
    "FORMAT_VERSION",
    "INIT_FILE",
    "LOCK_FILE",
    "MANIFEST",
    "VERSION_FILE",
    "Bundle",
    "Manifest",
    "TensorWriter",
    "VersionEntry",
    "VersionInfo",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "bundle_lock",
    "find_bundle",
    "is_bundle",
    "load_tensors",
    "refuse_existing",
    "save_tensors",
    "sha256_file",
    "summarize",
    "tensor_shapes",
]

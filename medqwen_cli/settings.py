"""Settings taken from the environment, read in one place.

    MEDQWEN_BUNDLE      the bundle a command uses when it is given no path (before the
                        git-like search of the current directory and its parents)
    MEDQWEN_CACHE_DIR   root of the cache of built presets and generated data
                        (default: the user cache directory, e.g. ~/.cache/medqwen)

The CLI reads them once per command (`Settings.from_env()`) and passes them down; library
functions take them as arguments, and only fall back to `from_env()` when a caller gives none.
`MEDQWEN_DEBUG` (tracebacks) is the CLI's own and is read there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BUNDLE_ENV = "MEDQWEN_BUNDLE"
CACHE_ENV = "MEDQWEN_CACHE_DIR"


@dataclass(frozen=True)
class Settings:
    bundle: Path | None  # default bundle, or None: search the current directory and its parents
    cache_dir: Path  # presets/ and data/ live under it

    @property
    def data_cache_dir(self) -> Path:
        """Where built-in datasets and converted images (MedMNIST, DICOM) are generated."""
        return self.cache_dir / "data"

    @property
    def presets_dir(self) -> Path:
        return self.cache_dir / "presets"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default: os.environ) gives, read now (never cached)."""
        env = os.environ if environ is None else environ
        bundle = env.get(BUNDLE_ENV) or None
        cache = env.get(CACHE_ENV)
        if cache:
            cache_dir = Path(cache).expanduser()
        else:
            from platformdirs import user_cache_dir

            cache_dir = Path(user_cache_dir("medqwen"))
        return cls(bundle=Path(bundle).expanduser() if bundle else None, cache_dir=cache_dir)

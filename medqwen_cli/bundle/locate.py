"""Where a bundle is: a path given, $MEDQWEN_BUNDLE, or the current directory and its parents."""

from __future__ import annotations

from pathlib import Path

from medqwen_cli.bundle.manifest import MANIFEST
from medqwen_cli.errors import BundleError
from medqwen_cli.settings import Settings


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def find_bundle(path: str | Path | None = None, settings: Settings | None = None) -> Path:
    """The bundle at `path`, else `settings.bundle` ($MEDQWEN_BUNDLE), else the current directory
    or its nearest parent holding one, like git. `settings` default: read from the environment."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise BundleError(
                f"bundle path does not exist: {p}",
                "create one with `medqwen init-experts --out DIR`",
            )
        if not is_bundle(p):
            raise BundleError(
                f"{p} is not a medqwen bundle (no {MANIFEST})",
                "pass the directory made by `medqwen init-experts`",
            )
        return p.resolve()
    default = (settings if settings is not None else Settings.from_env()).bundle
    if default is not None:
        return find_bundle(default)
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if is_bundle(candidate):
            return candidate
    raise BundleError(
        f"no bundle in {here} or any parent directory",
        "cd into a bundle, pass its path, or set MEDQWEN_BUNDLE; create one with "
        "`medqwen init-experts --base tiny-qwen2-vl --out DIR`",
    )


def refuse_existing(root: Path) -> None:
    """Refuse to create a bundle where one exists (medqwen never overwrites one) or on a file."""
    if is_bundle(root):
        raise BundleError(
            f"{root} already holds a bundle; medqwen never overwrites one",
            "choose another --out directory, or continue this one with `medqwen train`",
        )
    if root.exists() and not root.is_dir():
        raise BundleError(f"{root} exists and is not a directory", "choose another --out path")

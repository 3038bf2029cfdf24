"""A bundle's integrity: every file against the sha256 recorded for it.

The manifest records init.safetensors' sha256 and each version.json's; each version.json
records the sha256 of every other file of its version. A file is intact, missing, or changed
after it was written; paths are given relative to the bundle's root. A directory under
versions/ that no manifest entry names was left by an interrupted write: harmless (never
loaded, its id never reused), reported apart.
"""

from __future__ import annotations

from pathlib import Path

from medqwen_cli._io import sha256_file
from medqwen_cli.bundle.manifest import INIT_FILE, VERSION_FILE, Manifest, VersionEntry, VersionInfo
from medqwen_cli.errors import BundleIntegrityError


def file_damage(path: Path, digest: str) -> str | None:
    """What is wrong with `path` against its recorded sha256; None when it is intact."""
    if not path.is_file():
        return "missing"
    if sha256_file(path) != digest:
        return "checksum mismatch (the file changed after it was written)"
    return None


def init_damage(root: Path, manifest: Manifest) -> dict[str, str]:
    if manifest.init_sha256 is None:
        return {}
    problem = file_damage(root / INIT_FILE, manifest.init_sha256)
    return {INIT_FILE: problem} if problem else {}


def version_damage(root: Path, entry: VersionEntry) -> tuple[VersionInfo | None, dict[str, str]]:
    """(the version's info or None, its damaged files): version.json against the manifest,
    then every file against version.json."""
    vdir = root / "versions" / entry.id
    rel = f"versions/{entry.id}"
    problem = file_damage(vdir / VERSION_FILE, entry.sha256)
    if problem:
        return None, {f"{rel}/{VERSION_FILE}": problem}
    info = VersionInfo.model_validate_json((vdir / VERSION_FILE).read_text(encoding="utf-8"))
    damaged = {}
    for name, digest in info.files.items():
        if problem := file_damage(vdir / name, digest):
            damaged[f"{rel}/{name}"] = problem
    return info, damaged


def integrity_error(root: Path, what: str, damaged: dict[str, str]) -> BundleIntegrityError:
    listed = "; ".join(f"{path}: {problem}" for path, problem in damaged.items())
    hint = (
        "restore the damaged file(s) from a backup copy of the bundle (nothing was written); "
        "medqwen never uses a version whose files do not match their checksums"
    )
    if INIT_FILE in damaged:
        hint += f"; {INIT_FILE} cannot be rebuilt exactly"
    return BundleIntegrityError(
        f"{what}: {listed} (bundle {root})",
        hint + "; `medqwen inspect` lists every problem",
        damaged=damaged,
    )


def unpublished_notes(root: Path, manifest: Manifest) -> list[str]:
    """Version directories no manifest entry names: left by an interrupted write."""
    published = {e.id for e in manifest.versions}
    vdir = root / "versions"
    return [
        f"unpublished directory versions/{path.name} (left by an interrupted write; ignored)"
        for path in (sorted(vdir.iterdir()) if vdir.is_dir() else [])
        if path.name not in published
    ]

"""The bundle store: open, verify and grow a bundle (layout and guarantees: docs/bundle-format.md).

    <bundle>/
      bundle.json            Manifest: format, base (id, fingerprint), recipe, versions, head
      init.safetensors       frozen spectral factors A_j0 / B_j0 (exact residual, never re-SVD)
      versions/v0001/        one immutable directory per version:
        adapter.safetensors    trainable tensors; keys `<canonical module name>.<tensor>`
        version.json           parent, command, tasks, recipe, time, sha256 of every file
        metrics.json           training summary (and any other files the writer adds)
      evals.jsonl            one line per (version, task, metric, value)
      work/                  resumable training state (not part of any version)
      .lock                  held by the one process writing (`bundle.lock`)

Crash safety: a version is written into `versions/.tmp-*`, fsynced, renamed into place, and only
then published by an atomic rewrite of `bundle.json`. A crash at any point leaves the previous
head readable; an unpublished version directory is ignored (and reported by `verify`). Versions are
never rewritten or deleted. Only safetensors and JSON are written; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from medqwen_cli import __version__
from medqwen_cli._io import (
    TensorWriter,
    as_created,
    atomic_write_json,
    fsync_dir,
    load_tensors,
    save_tensors,
    sha256_file,
)
from medqwen_cli.bundle import evals, integrity
from medqwen_cli.bundle.locate import find_bundle, is_bundle, refuse_existing  # noqa: F401
from medqwen_cli.bundle.lock import bundle_lock
from medqwen_cli.bundle.manifest import (
    ADAPTER_FILE,
    FORMAT_VERSION,
    INIT_FILE,
    MANIFEST,
    VERSION_FILE,
    VERSION_RE,
    Manifest,
    VersionEntry,
    VersionInfo,
    now,
)
from medqwen_cli.errors import BundleError, BundleIntegrityError
from medqwen_cli.settings import Settings

if TYPE_CHECKING:
    import torch


# --------------------------------------------------------------------------- bundle


class Bundle:
    """An opened bundle. Reads verify checksums; writes take the lock and are atomic."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    # ----- opening and creating

    @classmethod
    def open(cls, path: str | Path | None = None, settings: Settings | None = None) -> Bundle:
        """The bundle `find_bundle(path, settings)` finds, its manifest read and validated."""
        root = find_bundle(path, settings)
        return cls(root, cls._read_manifest(root))

    @staticmethod
    def _read_manifest(root: Path) -> Manifest:
        file = root / MANIFEST
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"cannot read {file}: {exc}", "the manifest is corrupt; restore it from a backup"
            ) from None
        found = raw.get("format_version") if isinstance(raw, dict) else None
        if not isinstance(found, int):
            raise BundleError(
                f"{file} has no format_version", "this is not a medqwen bundle manifest"
            )
        if found > FORMAT_VERSION:
            raise BundleError(
                f"bundle {root} has format {found}, newer than this medqwen reads ({FORMAT_VERSION}; "
                f"written by medqwen {raw.get('medqwen_version', '?')})",
                "upgrade medqwen: pip install -U medqwen-cli",
            )
        try:
            return Manifest.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = " at " + ".".join(map(str, first["loc"])) if first["loc"] else ""
            raise BundleError(
                f"{file} is invalid{where}: {first['msg'].removeprefix('Value error, ')}",
                "the manifest was edited or damaged; restore it from a backup",
            ) from None

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        base: dict[str, Any],
        recipe: dict[str, Any],
        init_tensors: dict[str, torch.Tensor] | TensorWriter | None = None,
    ) -> Bundle:
        """Create an empty bundle (no versions yet) in `root`, refusing an existing bundle."""
        root = Path(root).expanduser().resolve()
        refuse_existing(root)
        root.mkdir(parents=True, exist_ok=True)
        with bundle_lock(root, "init-experts"):
            init_sha = None
            if init_tensors is not None:
                save_tensors(root / INIT_FILE, init_tensors, {"format": "medqwen-init"})
                init_sha = sha256_file(root / INIT_FILE)
            manifest = Manifest(created=now(), base=base, recipe=recipe, init_sha256=init_sha)
            atomic_write_json(root / MANIFEST, manifest.to_json())
        return cls(root, manifest)

    # ----- reading

    @property
    def head(self) -> str | None:
        """The version a command uses when none is named: the newest one, unless a version
        failed its acceptance criteria; then the newest accepted one of its lineage (the failed
        one is kept, and used when named; acceptance/log.py)."""
        from medqwen_cli.acceptance.log import default_version

        return default_version(self)

    def entry(self, version: str | None = None) -> VersionEntry:
        vid = self.resolve_version(version)
        return next(e for e in self.manifest.versions if e.id == vid)

    def resolve_version(self, version: str | None = None) -> str:
        """`None`/'head' -> the head id; 'v3', '3', 'v0003' -> 'v0003'."""
        if not self.manifest.versions:
            raise BundleError(
                f"bundle {self.root} has no versions yet",
                "run `medqwen init-experts` to write v0001",
            )
        if version in (None, "head", "HEAD"):
            return self.head  # type: ignore[return-value]
        digits = str(version).lstrip("vV")
        if not digits.isdigit():
            raise BundleError(
                f"bad version {version!r}", "versions look like v0001 (or 1); see `medqwen log`"
            )
        vid = f"v{int(digits):04d}"
        if vid not in {e.id for e in self.manifest.versions}:
            ids = ", ".join(e.id for e in self.manifest.versions)
            raise BundleError(f"bundle has no version {vid}", f"versions: {ids}")
        return vid

    def version_dir(self, version: str | None = None) -> Path:
        return self.root / "versions" / self.resolve_version(version)

    def lineage(self, version: str | None = None) -> list[VersionEntry]:
        """Entries from v0001 to `version` following parents."""
        by_id = {e.id: e for e in self.manifest.versions}
        chain = []
        current: str | None = self.resolve_version(version)
        while current is not None:
            entry = by_id[current]
            chain.append(entry)
            current = entry.parent
        return chain[::-1]

    def read_version_info(self, version: str | None = None) -> VersionInfo:
        """The version's version.json, once it and every file it lists match their sha256."""
        entry = self.entry(version)
        info, damaged = self._version_damage(entry)
        if damaged or info is None:
            raise self._integrity_error(f"version {entry.id} is damaged", damaged)
        return info

    def check_version(self, version: str | None = None) -> VersionInfo:
        """Verify everything a use of `version` rests on, before the use: init.safetensors and
        every file of every version of its lineage (v0001 to `version`), against their sha256.

        Raises BundleIntegrityError naming every damaged file (relative to the bundle); returns
        the version's info. Commands call it (through `read_adapter`, or directly before writing
        anything) so a damaged lineage stops them before any work and never grows a new version.
        """
        vid = self.resolve_version(version)
        damaged = self._init_damage()
        info = None
        for entry in self.lineage(vid):
            info, found = self._version_damage(entry)
            damaged |= found
        if damaged or info is None:
            chain = " -> ".join(e.id for e in self.lineage(vid))
            raise self._integrity_error(f"cannot use {vid} (lineage {chain})", damaged)
        return info

    def read_adapter(self, version: str | None = None) -> dict[str, torch.Tensor]:
        """Trainable tensors of a version, after `check_version` (its whole lineage verified);
        with those it inherits from its parent (bundle/objects.py)."""
        from medqwen_cli.bundle import objects

        info = self.check_version(version)
        return objects.resolve(self, info.id)

    def read_init(self) -> dict[str, torch.Tensor]:
        if self.manifest.init_sha256 is None:
            return {}
        damaged = self._init_damage()
        if damaged:
            raise self._integrity_error("the bundle's frozen init is damaged", damaged)
        return load_tensors(self.root / INIT_FILE)

    # ----- integrity (paths relative to the bundle root; bundle/integrity.py)

    def _init_damage(self) -> dict[str, str]:
        return integrity.init_damage(self.root, self.manifest)

    def _version_damage(self, entry: VersionEntry) -> tuple[VersionInfo | None, dict[str, str]]:
        return integrity.version_damage(self.root, entry)

    def damaged_files(self) -> dict[str, str]:
        """Every damaged file of the bundle (init and all versions): relative path -> problem."""
        damaged = self._init_damage()
        for entry in self.manifest.versions:
            damaged |= self._version_damage(entry)[1]
        return damaged

    def _integrity_error(self, what: str, damaged: dict[str, str]) -> BundleIntegrityError:
        return integrity.integrity_error(self.root, what, damaged)

    def read_json(self, name: str, version: str | None = None) -> Any:
        info = self.read_version_info(version)
        if name not in info.files:
            raise BundleError(f"version {info.id} has no {name}", f"files: {', '.join(info.files)}")
        return json.loads((self.version_dir(version) / name).read_text(encoding="utf-8"))

    # ----- writing

    def append_version(
        self,
        adapter: dict[str, torch.Tensor] | TensorWriter,
        *,
        command: str,
        tasks: list[str],
        recipe: dict[str, Any],
        parent: str | None = None,
        json_files: dict[str, Any] | None = None,
        files: dict[str, Path] | None = None,
    ) -> VersionEntry:
        """Write a new immutable version (child of `parent`, default the head) and make it head.

        `json_files` are written as JSON, `files` copied; all get a checksum in version.json.
        The adapter file holds only the tensors that differ from the parent's; the rest are
        inherited (bundle/objects.py).
        """
        from medqwen_cli.bundle import objects

        with bundle_lock(self.root, command):
            self.manifest = self._read_manifest(self.root)  # another writer may have added one
            if parent is None:
                parent = self.manifest.head
            elif parent not in {e.id for e in self.manifest.versions}:
                raise BundleError(f"parent version {parent} does not exist", "see `medqwen log`")
            vid = self._next_id()
            own = None
            if parent is not None and isinstance(adapter, dict):
                own = objects.new_tensors(adapter, objects.resolve(self, parent))
            lineage_tasks = self._lineage_tasks(parent) + list(tasks)
            versions = self.root / "versions"
            versions.mkdir(exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{vid}-", dir=versions))
            as_created(tmp, directory=True)  # readable by the team, as the umask says
            try:
                save_tensors(
                    tmp / ADAPTER_FILE, adapter if own is None else own,
                    {"format": "medqwen-adapter", "version": vid},
                )  # fmt: skip
                for name, data in (json_files or {}).items():
                    atomic_write_json(tmp / name, data)
                for name, src in (files or {}).items():
                    shutil.copyfile(src, tmp / name)
                digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                info = VersionInfo(
                    id=vid,
                    parent=parent,
                    command=command,
                    tasks=tasks,
                    lineage_tasks=lineage_tasks,
                    created=now(),
                    medqwen_version=__version__,
                    recipe=recipe,
                    files=digests,
                    inherits=None if own is None else parent,
                )
                atomic_write_json(tmp / VERSION_FILE, info.model_dump(mode="json"))
                entry = VersionEntry(
                    id=vid,
                    parent=parent,
                    command=command,
                    tasks=tasks,
                    created=info.created,
                    sha256=sha256_file(tmp / VERSION_FILE),
                )
                os.rename(tmp, versions / vid)  # refuses to replace an existing directory
                fsync_dir(versions)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            manifest = self.manifest.model_copy(deep=True)
            manifest.versions.append(entry)
            manifest.head = vid
            atomic_write_json(self.root / MANIFEST, manifest.to_json())
            self.manifest = manifest
            return entry

    def _lineage_tasks(self, version: str | None) -> list[str]:
        if version is None:
            return []
        tasks: list[str] = []
        for entry in self.lineage(version):
            tasks += entry.tasks
        return tasks

    def _next_id(self) -> str:
        """Next id after every published version and every directory on disk (even orphans)."""
        used = [int(m.group(1)) for e in self.manifest.versions if (m := VERSION_RE.match(e.id))]
        vdir = self.root / "versions"
        if vdir.is_dir():
            used += [int(m.group(1)) for p in vdir.iterdir() if (m := VERSION_RE.match(p.name))]
        return f"v{max(used, default=0) + 1:04d}"

    # ----- evaluations

    def append_evals(self, records: list[dict[str, Any]]) -> None:
        """Append evaluation lines {version, task, metric, value, ...} to evals.jsonl."""
        evals.append(self.root, records)

    def read_evals(self) -> list[dict[str, Any]]:
        return evals.read(self.root)

    # ----- checks

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    def verify(self) -> list[str]:
        """Every problem found in the bundle (empty when all checksums and files agree): each
        damaged file (see `damaged_files`), then each unpublished version directory."""
        damaged = [f"{path}: {problem}" for path, problem in self.damaged_files().items()]
        return damaged + self.unpublished_notes()

    def unpublished_notes(self) -> list[str]:
        """Version directories no manifest entry names (bundle/integrity.py): harmless."""
        return integrity.unpublished_notes(self.root, self.manifest)

    def check_base(self, fingerprint: str) -> None:
        expected = self.manifest.base.get("fingerprint")
        if expected and expected != fingerprint:
            raise BundleError(
                f"base model fingerprint {fingerprint} differs from the bundle's {expected} "
                f"(made on {self.manifest.base.get('model_id')})",
                "apply the bundle to the base it was made on (see `medqwen inspect`)",
            )

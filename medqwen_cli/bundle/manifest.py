"""The bundle's JSON documents, one pydantic model each (`extra="forbid"`: a stray key is an error).

    bundle.json                 Manifest     format, base, adapter settings, recipe, versions, head
    versions/vNNNN/version.json VersionInfo  parent, command, tasks, recipe, sha256 of every file

The adapter settings fixed at init live in one place, the `adapter` section of the resolved
recipe stored in `bundle.json` (`Manifest.adapter_settings`).

Format 1 (medqwen 0.1.0) also kept a copy of them under a top-level `method` key. It is
read by moving `method` into `recipe.adapter` (it was the copy readers trusted), and a format-1
bundle stays format 1: `Manifest.to_json` writes the `method` copy back, so a version added by
this medqwen leaves the bundle readable by the medqwen that created it.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medqwen_cli import __version__

FORMAT_VERSION = 2
MANIFEST = "bundle.json"
INIT_FILE = "init.safetensors"
ADAPTER_FILE = "adapter.safetensors"
VERSION_FILE = "version.json"
EVALS_FILE = "evals.jsonl"
LOCK_FILE = ".lock"
# The `version` of an evals.jsonl line scoring the base model alone (the zero-shot row).
BASE_VERSION = "base"
VERSION_RE = re.compile(r"^v(\d{4,})$")


def now() -> str:
    """UTC time as the bundle records it (ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionEntry(_Model):
    id: str
    parent: str | None
    command: str
    tasks: list[str] = Field(default_factory=list, description="tasks trained in this version")
    created: str
    sha256: str = Field(..., description="sha256 of the version's version.json")


class Manifest(_Model):
    format_version: int = FORMAT_VERSION
    medqwen_version: str = __version__
    created: str
    base: dict[str, Any] = Field(..., description="BaseInfo: name, id, revision, fingerprint, ...")
    recipe: dict[str, Any] = Field(
        ..., description="resolved recipe given at init; its `adapter` section is fixed at init"
    )
    init_sha256: str | None = None
    versions: list[VersionEntry] = Field(default_factory=list)
    head: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_format_1(cls, data: Any) -> Any:
        """Format 1 kept the adapter settings twice; `method` was the copy read, so it wins."""
        if not isinstance(data, dict) or data.get("format_version") != 1:
            return data
        if not isinstance(data.get("method"), dict):
            raise ValueError("a format 1 manifest needs its `method` object (the adapter settings)")
        upgraded = {k: v for k, v in data.items() if k != "method"}
        if isinstance(data.get("recipe"), dict):
            upgraded["recipe"] = {**data["recipe"], "adapter": data["method"]}
        return upgraded

    @property
    def adapter_settings(self) -> dict[str, Any]:
        """The adapter settings of the bundle (fixed at init): the stored recipe's `adapter`."""
        return dict(self.recipe.get("adapter") or {})

    def stored_recipe(self) -> dict[str, Any]:
        """The resolved recipe stored at init (a copy: callers may change it)."""
        return dict(self.recipe)

    def to_json(self) -> dict[str, Any]:
        """The manifest as `bundle.json` holds it, in the bundle's own format version."""
        data = self.model_dump(mode="json")
        if self.format_version == 1:  # put the copy back where format 1 readers require it
            keys = list(data)
            data["method"] = self.adapter_settings
            at = keys.index("recipe")
            data = {k: data[k] for k in (*keys[:at], "method", *keys[at:])}
        return data

    @property
    def tasks_seen(self) -> list[str]:
        seen: list[str] = []
        for entry in self.versions:
            seen += [t for t in entry.tasks if t not in seen]
        return seen


class VersionInfo(_Model):
    """Contents of versions/vNNNN/version.json."""

    id: str
    parent: str | None
    command: str
    tasks: list[str]
    lineage_tasks: list[str] = Field(..., description="every task trained from v0001 to this one")
    created: str
    medqwen_version: str
    recipe: dict[str, Any]
    files: dict[str, str] = Field(..., description="file name -> sha256")
    inherits: str | None = Field(
        None,
        description="the version (the parent) whose adapter supplies every tensor this "
        "version's adapter.safetensors leaves out: the ones bit-equal to the parent's (frozen). "
        "None: the file holds every tensor",
    )

"""The bundle's JSON documents, one pydantic model each (`extra="forbid"`: a stray key is an error).

    bundle.json                 Manifest     format, base, adapter settings, recipe, versions, head
    versions/vNNNN/version.json VersionInfo  parent, command, tasks, recipe, sha256 of every file

`Manifest.method` holds the adapter settings used at init and is the one source every reader
takes them from (`Manifest.adapter_settings`); `Manifest.recipe` is the whole resolved recipe
given at init, whose `adapter` section is a copy of `method` written at the same time. Both keys
stay in format 1 so that every medqwen that reads format 1 reads a bundle written by another.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medqwen_cli import __version__

FORMAT_VERSION = 1
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
    method: dict[str, Any] = Field(..., description="adapter config used at init")
    recipe: dict[str, Any] = Field(..., description="resolved recipe given at init")
    init_sha256: str | None = None
    versions: list[VersionEntry] = Field(default_factory=list)
    head: str | None = None

    @property
    def adapter_settings(self) -> dict[str, Any]:
        """The adapter settings of the bundle (fixed at init): `method`, never `recipe.adapter`."""
        return dict(self.method)

    def stored_recipe(self) -> dict[str, Any]:
        """The recipe stored at init, its adapter section taken from `method` (the one source)."""
        recipe = dict(self.recipe)
        if self.method:
            recipe["adapter"] = self.adapter_settings
        return recipe

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

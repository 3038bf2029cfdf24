"""The continual record of a version: `continual.json`, one typed model, written and read here.

A version trained with a strategy other than `none` holds `continual.json`: the strategy, its
settings, and what it drew on (record ids, never record text; for protect the bases' sizes and
sources). A protected version also holds `protect.safetensors`, the layer-input bases the next
`--protect` starts from (derived statistics, not records). Every reader (the next run's plan,
`inspect`, the forgetting report, the run's own output) goes through `read_record`.

`schema` counts the file's layout: 1 is the first (files written before the field existed read
as 1); protect writes 2 since its bases hold energies and each version stores only the tasks it
added (continual/bases.py). A record that does not match its strategy's model fails with the
version named. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from medqwen_cli.errors import BundleError

CONTINUAL_FILE = "continual.json"  # in a version trained with a strategy: its settings and ids
PROTECT_FILE = "protect.safetensors"  # in a protected version: the input bases per layer group


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: int = Field(1, alias="schema")

    def describe(self) -> str:  # pragma: no cover - every strategy says itself
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ReplayedTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: int  # records in the pool replay drew from
    ids: list[str]
    data_checked_against: str | None  # the version whose data.json vouched for the data


class ReplayRecord(_Record):
    strategy: Literal["replay"] = "replay"
    replay: float  # the share asked for
    replay_per_task: int | None  # the buffer per earlier task (None: every record)
    replayed_per_batch: int  # ceil(replay * batch_size), at least 1
    batch_size: int
    tasks: dict[str, ReplayedTask]

    def describe(self) -> str:
        per_task = f", {self.replay_per_task} per task" if self.replay_per_task else ""
        return f"replay {self.replay}{per_task}"


class BasesInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[str]  # the tasks the stored bases cover, in the order they were added
    sizes: dict[str, list[int]]  # group -> [n, K]: every stored column
    # group -> columns guarding this version's branch (schema 1: the first ones; schema 2: the
    # columns the run's cut chose)
    guarded: dict[str, int]
    added: list[int] = Field(default_factory=list)  # task indices this version's file holds
    files: dict[str, list[int]] = Field(default_factory=dict)  # earlier version -> its indices


class ProtectRecord(_Record):
    strategy: Literal["protect"] = "protect"
    protect_energy: float
    protect_records: int
    protected_tasks: list[str]  # the new branch cannot move these tasks' inputs
    branches: int  # branches per layer in the version
    branch_params: list[int]  # parameters of each branch, summed over layers
    bases: BasesInfo
    tasks: dict[str, dict[str, Any]]  # task -> where its basis came from (source, record ids)
    groups: dict[str, str]  # layer -> the first layer reading the same input
    new_task_energy_in_bases: dict[str, float]  # group -> the new task's energy already inside
    # schema 2: what a full layer does (fit or refuse); per group, each protected task's energy
    # the guarding columns hold (a lower bound; None: unknown, an older file); the groups where
    # the cut did not fit: [columns the energy asked for, room left by the branch]
    protect_full: str = "refuse"
    held: dict[str, list[float | None]] = Field(default_factory=dict)
    full: dict[str, list[int]] = Field(default_factory=dict)
    replay: ReplayRecord | None = None  # the run also replayed (absent from the file if not)
    protect_exclude: list[str] = Field(default_factory=list)  # layers given no branch (if any)

    def describe(self) -> str:
        also = f" + {self.replay.describe()}" if self.replay is not None else ""
        if not self.protected_tasks:
            return f"protect {self.protect_energy}: basis recorded{also}"
        full = f", {len(self.full)} layer input(s) full" if self.full else ""
        skip = f", no branch at {' '.join(self.protect_exclude)}" if self.protect_exclude else ""
        return f"protect {self.protect_energy}, branch {self.branches}{full}{skip}{also}"

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for key in ("replay", "protect_exclude"):  # a run without them reads as before
            if not out[key]:
                del out[key]
        return out


ContinualRecord = Annotated[ReplayRecord | ProtectRecord, Field(discriminator="strategy")]
_ADAPTER: TypeAdapter[ReplayRecord | ProtectRecord] = TypeAdapter(ContinualRecord)


def parse_record(
    data: dict[str, Any], where: str = "continual.json"
) -> ReplayRecord | ProtectRecord:
    """The typed record of `data` (a parsed continual.json); a BundleError names `where`."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        place = ".".join(str(p) for p in first["loc"])
        raise BundleError(
            f"{where} is not a continual record this medqwen reads ({place}: {first['msg']})",
            "it may come from a newer medqwen: upgrade (`pip install -U medqwen`), or inspect "
            "the file by hand",
        ) from None


def read_record(bundle: Any, version: str) -> ReplayRecord | ProtectRecord | None:
    """`version`'s continual record, or None when it trained without a strategy."""
    if CONTINUAL_FILE not in bundle.read_version_info(version).files:
        return None
    return parse_record(bundle.read_json(CONTINUAL_FILE, version), f"{version}/{CONTINUAL_FILE}")


def version_strategy(bundle: Any, version: str) -> str:
    """How `version` kept earlier tasks, in words: `none`, `replay 0.1, 50 per task`, or
    `protect 0.99, branch 1`."""
    record = read_record(bundle, version)
    return "none" if record is None else record.describe()


def stored_bases(bundle: Any, parent: str | None) -> tuple[str | None, list[str]]:
    """(the latest version of `parent`'s lineage that stored bases, the tasks they cover)."""
    if parent is None:
        return None, []
    for entry in reversed(bundle.lineage(parent)):
        if PROTECT_FILE in bundle.read_version_info(entry.id).files:
            record = read_record(bundle, entry.id)
            assert isinstance(record, ProtectRecord)  # only protect writes bases
            return entry.id, list(record.bases.tasks)
    return None, []


def least_held(record: ProtectRecord) -> dict[str, tuple[float, str]]:
    """Per protected task, the smallest energy of it a guarding group holds, and that group
    (schema 2 records; empty for older ones)."""
    out: dict[str, tuple[float, str]] = {}
    tasks = record.bases.tasks
    for group, values in record.held.items():
        for task, value in zip(tasks, values, strict=False):
            if value is not None and (task not in out or value < out[task][0]):
                out[task] = (value, group)
    return out


def inspect_fields(bundle: Any, version: str) -> dict[str, Any]:
    """What `inspect` shows of `version`'s strategy: its name and, for a protected version, the
    bases' tasks, size and share of the layers' inputs, the columns guarding its branch, and
    per earlier task the least energy of it a layer input kept."""
    record = read_record(bundle, version)
    out: dict[str, Any] = {"strategy": "none" if record is None else record.describe()}
    if isinstance(record, ProtectRecord) and record.bases.sizes:
        shares = [k / n for n, k in record.bases.sizes.values()]
        sizes = record.bases.sizes
        # over the layer inputs with a branch (all of them unless continual.protect_exclude)
        guarded = [k / sizes[g][0] for g, k in record.bases.guarded.items()] or [0.0]
        out["protect_bases"] = {
            "what": "layer-input directions: derived statistics, no records",
            "tasks": record.bases.tasks,
            "groups": len(record.bases.sizes),
            "floats": sum(n * k for n, k in record.bases.sizes.values()),
            "share_of_inputs": [round(min(shares), 4), round(max(shares), 4)],
            "guarding_branch": [round(min(guarded), 4), round(max(guarded), 4)],
            "full_layer_inputs": len(record.full),
            "least_kept": {t: [round(v, 4), g] for t, (v, g) in least_held(record).items()},
            "stored_in": {**record.bases.files, version: record.bases.added}
            if record.schema_ >= 2
            else {version: list(range(len(record.bases.tasks)))},
        }
    return out

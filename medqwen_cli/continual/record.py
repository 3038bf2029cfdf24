"""The continual record of a version: `continual.json`, one typed model, written and read here.

A version trained with a strategy other than `none` holds `continual.json`: the strategy, its
settings, and what it drew on (record ids, never record text; for protect the bases' sizes and
sources). A protected version also holds `protect.safetensors`, the layer-input bases the next
`--protect` starts from (derived statistics, not records). Every reader (the next run's plan,
`inspect`, the forgetting report, the run's own output) goes through `read_record`.

`schema` counts the file's layout: 1 is the first (files written before the field existed read
as 1). A record that does not match its strategy's model fails with the version named. Nothing
here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from medqwen_cli.errors import BundleError

CONTINUAL_FILE = "continual.json"  # in a version trained with a strategy: its settings and ids
PROTECT_FILE = "protect.safetensors"  # in a protected version: the input bases per layer group
SCHEMA = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: int = Field(SCHEMA, alias="schema")

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
    sizes: dict[str, list[int]]  # group -> [n, k]
    guarded: dict[str, int]  # group -> the first columns: the bases this version's branch avoids


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

    def describe(self) -> str:
        if not self.protected_tasks:
            return f"protect {self.protect_energy}: basis recorded"
        return f"protect {self.protect_energy}, branch {self.branches}"


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


def inspect_fields(bundle: Any, version: str) -> dict[str, Any]:
    """What `inspect` shows of `version`'s strategy: its name and, with stored bases, their
    tasks, groups, size and share of the layers' inputs (read from the file's header)."""
    from medqwen_cli._io import numel, tensor_shapes

    record = read_record(bundle, version)
    out: dict[str, Any] = {"strategy": "none" if record is None else record.describe()}
    path = bundle.version_dir(version) / PROTECT_FILE
    if isinstance(record, ProtectRecord) and path.is_file():
        shapes = tensor_shapes(path)
        shares = [k / n for n, k in shapes.values()]
        out["protect_bases"] = {
            "what": "layer-input directions: derived statistics, no records",
            "tasks": record.bases.tasks,
            "groups": len(shapes),
            "floats": numel(shapes.values()),
            "share_of_inputs": [round(min(shares), 4), round(max(shares), 4)],
        }
    return out

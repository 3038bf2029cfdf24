"""The stored bases of protect: per layer-input group, directions with the energy they carry.

For each protected task t and group g the bases hold its own directions U_t,g (n x k, added
after every earlier task's, orthogonal to them; continual/subspace.py) and its energy along
every column so far, e_t,g (K_before + k: `column_energies`). A run then chooses its own cut:
per task, the fewest of its own columns that, with the columns already chosen, hold
`continual.protect_energy` of it; when a layer has no room for that and a new branch,
the columns worth most to some task (`choose_columns`).

Directions are stored in 8 bits (codes and one float32 scale per column) and defined by what
is stored: the run that adds a task rounds its new directions to 8 bits, makes them orthonormal
again and orthogonal to the earlier columns (`settle`), and measures the task's energies on
those; a later run reads the same codes and settles them the same way. So the guarantee
(outputs on the guarded span never move) holds for exactly the span a later run guards, and the
energies recorded are that span's own. Rounding moves which span that is, by about 1e-2, and
can leave it holding slightly less than the energy asked (about 1e-4 less at 0.99:
benchmarks/bases_precision.py); then the next direction is taken as well, and so on until the
settled span holds it. Where no number of directions does (energy 1: the inputs' exact span),
the group's directions stay float32, read as stored, as are the float32 files of medqwen before
16-bit storage; the float16 files of medqwen before 8-bit storage are settled as they were.

Storage grows linearly with tasks: a version's `protect.safetensors` holds only the tasks it
added (tensors `<task index>:<group>:directions` and `...:energy`); the earlier tasks' columns
stay in the earlier versions' files, which the record lists by version (`BasesInfo.files`) and
the bundle's checksums verify with the lineage. Files of medqwen before this layout hold each
group's accumulated basis (tensor `<group>`) with no energies: they load whole, their tasks'
energies unknown (they are kept entirely, or cut in column order when a layer is full).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medqwen_cli.continual.record import PROTECT_FILE, ProtectRecord, read_record

if TYPE_CHECKING:
    from pathlib import Path

    from torch import Tensor

_SEP = ":"
SPARE = 1 / 16  # directions past the fewest that 8-bit rounding may need (and one more)


@dataclass
class Bases:
    """Every protected task's directions, per group, in the order the tasks were added."""

    tasks: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)  # per task: where it came from
    columns: dict[str, Tensor] = field(default_factory=dict)  # group -> (n, K) float64
    owner: dict[str, list[int]] = field(default_factory=dict)  # group -> task of each column
    energies: dict[str, list[Tensor | None]] = field(default_factory=dict)  # group -> per task
    origin: list[str | None] = field(default_factory=list)  # per task: version file holding it
    stored: dict[tuple[int, str], tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    # ^ this run's: (8-bit codes, their column scales), or (float32 directions, None)
    covered: dict[str, set[int]] = field(default_factory=dict)  # group -> tasks that recorded it

    def add(self, task: str, grams: dict[str, Tensor], energy: float, source: dict) -> dict:
        """Task `task`'s directions from its inputs' Gram matrices (group -> C), up to `energy`
        of it; returns per group the share of its energy already inside the bases."""
        import torch

        from medqwen_cli.continual.subspace import (
            candidate_directions,
            column_energies,
            energy_in,
        )

        index = len(self.tasks)
        inside = {}
        for group, gram in grams.items():
            old = self.columns.get(group)
            if old is None:
                old = gram.new_zeros(gram.shape[0], 0)
            inside[group] = energy_in(old, gram)
            block, count = candidate_directions(old, gram, energy, SPARE)
            stored, cols = _settled(old, gram, energy, block, count)
            if stored is None:  # no 8-bit prefix holds the energy asked: float32
                new = block[:, :count]
                stored = (new.float().contiguous(), None)
                cols = torch.cat([old, new.float().double()], dim=1)
            self.stored[(index, group)] = stored
            self.columns[group] = cols
            self.covered.setdefault(group, set()).add(index)
            self.owner.setdefault(group, []).extend([index] * stored[0].shape[1])
            per_task = self.energies.setdefault(group, [])
            per_task += [None] * (index - len(per_task))  # groups a legacy file lacked
            per_task.append(column_energies(cols, gram))
        self.tasks.append(task)
        self.sources.append(source)
        self.origin.append(None)  # this run's: stored in the new version's file
        return inside

    def missing(self, groups: set[str]) -> dict[str, list[str]]:
        """Of `groups`, those some task recorded no directions for (its run gave no layer
        reading that input a branch: continual.protect_exclude), with those tasks."""
        out = {}
        for group in sorted(groups):
            lacking = [t for i, t in enumerate(self.tasks) if i not in self.covered.get(group, ())]
            if lacking:
                out[group] = lacking
        return out

    def cut(self, energy: float, room: dict[str, int]) -> tuple[dict[str, Tensor], dict]:
        """(group -> the columns guarding a new branch, group -> per task the energy held), for
        the groups of `room` (group -> directions the bases may take)."""
        from medqwen_cli.continual.subspace import choose_columns

        guard, held = {}, {}
        for group in room:
            cols = self.columns[group]
            energies = self.energies[group] + [None] * (len(self.tasks) - len(self.energies[group]))
            keep, held[group] = choose_columns(self.owner[group], energies, energy, room[group])
            guard[group] = cols[:, keep]
        return guard, held

    def tensors(self, indices: list[int]) -> dict[str, Tensor]:
        """The file of a version that added tasks `indices` (this run's): directions as stored
        (8-bit codes with float32 column scales, or float32), energies float32."""
        out = {}
        for group in self.columns:
            for t in indices:
                if (t, group) not in self.stored:  # the task recorded no basis for this input
                    continue
                energy = self.energies[group][t]
                directions, scale = self.stored[(t, group)]
                out[f"{t}{_SEP}{group}{_SEP}directions"] = directions.contiguous()
                if scale is not None:
                    out[f"{t}{_SEP}{group}{_SEP}scale"] = scale.contiguous()
                if energy is not None:
                    out[f"{t}{_SEP}{group}{_SEP}energy"] = energy.float().contiguous()
        return out

    def sizes(self) -> dict[str, list[int]]:
        return {g: [int(c.shape[0]), int(c.shape[1])] for g, c in self.columns.items()}


def _settled(
    old: Tensor, gram: Tensor, energy: float, block: Tensor, count: int
) -> tuple[tuple[Tensor, Tensor | None] | None, Tensor]:
    """((codes, scales), old and the settled new columns) for the fewest first columns of
    `block` (at least `count`) whose settled 8-bit span, with `old`, holds the energy the exact
    `count` columns ask; (None, old) when no prefix does."""
    import torch

    from medqwen_cli.continual.subspace import dequantize, energy_in, quantize, settle

    asked = min(energy, energy_in(torch.cat([old, block[:, :count]], dim=1), gram))
    for j in range(count, block.shape[1] + 1):
        codes, scale = quantize(block[:, :j])
        cols = torch.cat([old, settle(old, dequantize(codes, scale))], dim=1)
        if energy_in(cols, gram) >= asked - 1e-12:
            return (codes, scale), cols
    return None, old


def load_bases(bundle: Any, parent: str | None) -> tuple[Bases, dict[str, str]]:
    """The bases `parent`'s lineage stored, and the layer -> group map they were made with;
    empty when no version of the lineage stored any."""
    import torch

    from medqwen_cli.bundle import load_tensors
    from medqwen_cli.continual.subspace import dequantize, settle

    bases, groups = Bases(), {}
    chain = _chain(bundle, parent)
    for version, record, indices in chain:
        stored = load_tensors(bundle.version_dir(version) / PROTECT_FILE)
        groups = dict(record.groups)
        if record.schema_ < 2:  # one accumulated basis per group, no energies
            for task in record.bases.tasks:
                bases.tasks.append(task)
                bases.sources.append({"source": f"version {version}"})
                bases.origin.append(version)
            first = 0
            for group, cols in stored.items():
                bases.covered[group] = set(range(len(record.bases.tasks)))
                bases.columns[group] = cols.double()
                bases.owner[group] = [first] * cols.shape[1]
                bases.energies[group] = [None] * len(record.bases.tasks)
            continue
        for t in indices:
            bases.tasks.append(record.bases.tasks[t])
            bases.sources.append({"source": f"version {version}"})
            bases.origin.append(version)
            for key, value in stored.items():
                index, group, kind = key.split(_SEP)
                if int(index) != t or kind != "directions":
                    continue
                bases.covered.setdefault(group, set()).add(t)
                old = bases.columns.get(group, value.new_zeros(value.shape[0], 0).double())
                # 8 or 16 bits: settled as the adding run did; float32: as stored
                if value.dtype == torch.int8:
                    value = dequantize(value, stored[f"{t}{_SEP}{group}{_SEP}scale"])
                    new = settle(old, value)
                elif value.dtype == torch.float16:  # medqwen before 8-bit directions
                    new = settle(old, value)
                else:
                    new = value.double()
                bases.columns[group] = torch.cat([old, new], dim=1)
                bases.owner.setdefault(group, []).extend([t] * value.shape[1])
                energy = stored.get(f"{t}{_SEP}{group}{_SEP}energy")
                per_task = bases.energies.setdefault(group, [])
                per_task += [None] * (t - len(per_task))
                per_task.append(None if energy is None else energy.double())
    return bases, groups


def _chain(bundle: Any, parent: str | None) -> list[tuple[str, ProtectRecord, list[int]]]:
    """The versions whose files hold the bases of `parent`'s latest protected version, oldest
    first, each with the task indices it holds."""
    latest = _latest(bundle, parent)
    if latest is None:
        return []
    record = read_record(bundle, latest)
    assert isinstance(record, ProtectRecord)
    if record.schema_ < 2:
        return [(latest, record, list(range(len(record.bases.tasks))))]
    chain = []
    for version, indices in record.bases.files.items():
        held = read_record(bundle, version)
        assert isinstance(held, ProtectRecord)
        chain.append((version, held, indices))
    return [*chain, (latest, record, record.bases.added)]


def _latest(bundle: Any, parent: str | None) -> str | None:
    if parent is None:
        return None
    for entry in reversed(bundle.lineage(parent)):
        if PROTECT_FILE in bundle.read_version_info(entry.id).files:
            return entry.id
    return None


def save_bases(bases: Bases, path: Path, indices: list[int]) -> None:
    from medqwen_cli._io import save_tensors

    save_tensors(path, bases.tensors(indices), {"format": "medqwen-bases", "layout": "2"})

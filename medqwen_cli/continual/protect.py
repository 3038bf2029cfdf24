"""Protect: each new task trains a branch that cannot move the earlier tasks' layer inputs.

docs/continual.md has the maths and what it measured; continual/subspace.py the bases. With
`continual.protect` (`continue --protect`), a run

1. plan: finds the earlier tasks' input bases, from the parent's lineage (the latest version
   whose `protect.safetensors` covers them) or, for a task no version covered, from a seeded
   sample of `protect_records` of its train records (checked against its version's data
   digest, continual/lineage.py);
2. prepare: computes the missing bases on the parent model, freezes every adapter tensor so far
   and adds one branch per adapted layer in the complement of its group's basis (none when the
   lineage has no earlier task: the first task of a protected sequence just trains);
3. after each optimizer step: puts every branch's input side back into its complement (AdamW's
   per-coordinate steps and weight decay move it out);
4. finish: adds the run's own task's basis (on the trained model), so that the next `--protect`
   needs no old data; the version stores every basis (`protect.safetensors`, derived
   statistics, not records) and its record says where each came from, each group's size, and
   how much of the new task's input energy already lay inside the earlier bases (what limits
   plasticity).

Nothing imports torch until `prepare`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medqwen_cli.continual.bases import Bases, load_bases, save_bases
from medqwen_cli.continual.lineage import earlier_tasks, task_train_records
from medqwen_cli.continual.record import PROTECT_FILE, BasesInfo, ProtectRecord, stored_bases
from medqwen_cli.continual.strategy import Strategy
from medqwen_cli.errors import DataError, RecipeError, TrainingError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from medqwen_cli.adapters.config import AdapterConfig
    from medqwen_cli.adapters.layer import Branch

_SAMPLE_SALT = 104_729  # separates the basis sample's random stream from the others


def sample(records: list[Any], count: int, seed: int, index: int) -> list[Any]:
    """A seeded sample of `count` records (all of them when there are fewer), in data order."""
    if count >= len(records):
        return list(records)
    rng = np.random.default_rng([seed, _SAMPLE_SALT, index])
    return [records[i] for i in np.sort(rng.choice(len(records), size=count, replace=False))]


@dataclass
class ProtectStrategy(Strategy):
    """One protected run: its plan (decided before any model loads, `plan_protect`), then its
    bases and branches on the model."""

    energy: float
    records: int  # records per task for a basis
    earlier: list[str]  # the lineage's earlier tasks: the new branch is protected against them
    stored_from: str | None  # the latest version of the lineage that stored bases
    stored_tasks: list[str]
    # earlier tasks without a stored basis: (task, sampled train records, version vouching)
    from_data: list[tuple[str, list[Any], str | None]] = field(default_factory=list)
    seed: int = 0  # the samples' seed (train.seed)
    own_tasks: list[str] = field(default_factory=list)  # the run's tasks
    full: str = "fit"  # continual.protect_full: what a layer without room does
    exclude: list[str] = field(default_factory=list)  # continual.protect_exclude: no branch there
    adapter: Any = None  # the recipe's adapter settings: the branches' method, rank, experts
    train: Any = None  # the recipe's train settings: batch size, image and length limits
    replay: Any = None  # the run also replays: its batches come from this ReplayStrategy
    name = "protect"

    # filled by the phases
    collator: Any = None
    device: Any = None
    bases: Bases = field(default_factory=Bases)
    groups: dict[str, str] = field(default_factory=dict)
    stored_count: int = 0  # tasks of `bases` read from earlier versions' files
    new_energy: dict[str, float] = field(default_factory=dict)  # group -> new task inside bases
    guarded: dict[str, int] = field(default_factory=dict)  # group -> columns guarding the branch
    held: dict[str, list[float | None]] = field(default_factory=dict)  # group -> per task
    over: dict[str, list[int]] = field(default_factory=dict)  # full groups: [asked, room]
    branches: int = 0
    branched: list[str] = field(default_factory=list)  # the layers given a branch

    # ------------------------------------------------------------------ phases

    def prepare(self, model: nn.Module, *, bundle: Any, processor: Any, device: Any) -> None:
        """Load or compute the earlier tasks' bases, cut them at this run's energy, and add the
        new branches in the complement of the cut (if there is an earlier task)."""
        from medqwen_cli.data.collate import Collator

        self.device = device
        self.collator = Collator(
            processor, max_image_pixels=self.train.max_image_pixels,
            max_length=self.train.max_length,
        )  # fmt: skip
        self.bases, self.groups = load_bases(bundle, self.stored_from)
        self.stored_count = len(self.bases.tasks)
        self.branched = branched_layers(model, self.exclude)
        for task, records, checked in self.from_data:
            source = {"source": "data", "records": len(records), "checked_against": checked}
            self._add(model, task, records, source)
        if not self.earlier:
            return
        needed = {self.groups.get(name, name) for name in self.branched}
        missing = self.bases.missing(needed)
        if missing:
            raise _unrecorded_error(missing, self.exclude)
        sizes = {name: layer.in_features for name, layer in _layers(model)}
        room = {g: sizes[g] - self.adapter.rank for g in sorted(needed)}
        guard, self.held = self.bases.cut(self.energy, room)
        asked, _ = self.bases.cut(self.energy, {g: sizes[g] for g in room})  # without the branch
        self.over = {
            g: [int(asked[g].shape[1]), room[g]] for g in room if asked[g].shape[1] > room[g]
        }
        if self.over and self.full == "refuse":
            raise _full_error(self.bases, self.over, self.energy, room)
        self.guarded = {g: int(m.shape[1]) for g, m in guard.items()}
        add_protected_branches(model, guard, self.groups, self.adapter, layers=self.branched)
        layers = [layer for _, layer in _layers(model)]
        self.branches = max(len(layer.branches) for layer in layers)
        for layer in layers:  # the earlier tasks' linear parts join W0, for this run only
            layer.fold_into_base()

    def after_step(self, model: nn.Module) -> None:
        """Every protected branch's A back into its complement: A <- A (I - M M^T)."""
        for _, layer in _layers(model):
            for branch in layer.branches:
                branch.reproject()

    def finish(self, model: nn.Module, records: list[Any]) -> None:
        """Add the run's own tasks (a sample of their train records) on the trained model."""
        chosen = sample(list(records), self.records, self.seed, len(self.earlier))
        for task in self.own_tasks:
            source = {"source": "data", "records": len(chosen)}
            self.new_energy = self._add(model, task, chosen, source)

    def notes(self) -> list[str]:
        """One warning when some layers could not protect every earlier task at the energy."""
        if not self.over:
            return []
        worst = sorted(self.over.items(), key=lambda kv: kv[1][1] / max(kv[1][0], 1))[:3]
        lows = _lowest(self.bases.tasks, self.held)
        shown = ", ".join(f"{g} ({a} directions asked, room for {r})" for g, (a, r) in worst)
        low = "; ".join(f"{t}: {v:.3f} of its energy in {g}" for t, (v, g) in lows.items())
        return [
            f"protect: {len(self.over)} layer input(s) had no room for every earlier task's basis "
            f"at energy {self.energy} and a branch of rank {self.adapter.rank}; the directions "
            f"worth most were kept: {shown}. Least kept per task: {low}. "
            "(continual.protect_full=refuse stops instead)"
        ]

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """For the run's result: settings, sources, sizes (no ids)."""
        from medqwen_cli.adapters.branches import branch_params

        sizes = {g: c.shape[0] for g, c in self.bases.columns.items()}
        shares = [k / sizes[g] for g, k in self.guarded.items()]
        inside = list(self.new_energy.values())
        return {
            "strategy": "protect",
            **({"replay": self.replay.summary()} if self.replay is not None else {}),
            "protect_energy": self.energy,
            "protected_tasks": list(self.earlier),
            "bases_from": {
                t: s["source"] for t, s in zip(self.bases.tasks, self.bases.sources, strict=True)
            },
            "branches": self.branches,
            "branch_params": branch_params(model),
            "basis_share": [min(shares), max(shares)] if shares else [0.0, 0.0],
            "new_task_energy_in_bases": [min(inside), max(inside)] if inside else None,
            "full_layers": len(self.over),
            **(
                {"protect_exclude": list(self.exclude), "branched_layers": len(self.branched)}
                if self.exclude
                else {}
            ),
            "least_held": {
                t: round(v, 4) for t, (v, _) in _lowest(self.bases.tasks, self.held).items()
            },
        }

    def record(self, model: nn.Module) -> ProtectRecord:
        from medqwen_cli.adapters.branches import branch_params

        files: dict[str, list[int]] = {}
        for index, version in enumerate(self.bases.origin):
            if version is not None:
                files.setdefault(version, []).append(index)
        added = [i for i, v in enumerate(self.bases.origin) if v is None]
        tasks = {}
        for task, source in zip(self.bases.tasks, self.bases.sources, strict=True):
            ids = source.get("ids")
            tasks[task] = {k: v for k, v in source.items() if k != "ids"} | (
                {"ids": ids} if ids else {}
            )
        return ProtectRecord(
            schema_=2, protect_energy=self.energy, protect_records=self.records,
            protected_tasks=list(self.earlier), branches=self.branches,
            branch_params=branch_params(model),
            bases=BasesInfo(tasks=list(self.bases.tasks), sizes=self.bases.sizes(),
                            guarded=self.guarded, added=added, files=files),
            tasks=tasks, groups=self.groups,
            new_task_energy_in_bases={g: round(v, 6) for g, v in self.new_energy.items()},
            protect_full=self.full,
            held={g: [None if v is None else round(v, 6) for v in vs] for g, vs in self.held.items()},
            full=self.over, replay=self.replay.record() if self.replay is not None else None,
            protect_exclude=list(self.exclude),
        )  # fmt: skip

    def files(self, run_dir: Path) -> dict[str, Path]:
        path = run_dir / PROTECT_FILE
        added = [i for i, v in enumerate(self.bases.origin) if v is None]
        save_bases(self.bases, path, added)
        return {PROTECT_FILE: path}

    # ------------------------------------------------------------------ helpers

    def _add(self, model: nn.Module, task: str, records: Sequence[Any], source: dict) -> dict:
        """Add `task`'s basis from the inputs of `records`; per group, the share of its energy
        already inside the bases."""
        from medqwen_cli.continual.subspace import input_grams

        size = self.train.batch_size
        grams, groups, tokens = input_grams(
            model, lambda: _batches(records, self.collator, size), self.device,
            only=set(self.branched),
        )  # fmt: skip
        if self.groups and groups != self.groups:
            raise TrainingError(
                "the layers' input groups differ from the stored bases' "
                f"({len(groups)} groups now, {len(self.groups)} stored)",
                "continue with the adapter settings the bases were made with",
            )
        self.groups = groups
        source = {**source, "tokens": tokens, "ids": [r.id for r in records]}
        return self.bases.add(task, grams, self.energy, source)


def _lowest(tasks: list[str], held: dict[str, list[float | None]]) -> dict[str, tuple[float, str]]:
    """Per task, the smallest energy of it any group holds, and that group."""
    out: dict[str, tuple[float, str]] = {}
    for group, values in held.items():
        for task, value in zip(tasks, values, strict=False):
            if value is not None and (task not in out or value < out[task][0]):
                out[task] = (value, group)
    return out


def _full_error(bases: Bases, over: dict, energy: float, room: dict[str, int]) -> TrainingError:
    """The refusal of a full layer (continual.protect_full=refuse), with an energy that fits."""
    (group, (asked, left)), *_ = sorted(over.items(), key=lambda kv: kv[1][1] - kv[1][0])
    fits = next(
        (e for e in (0.98, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.1) if e < energy
         and all(m.shape[1] <= room[g] for g, m in bases.cut(e, {g: 10**9 for g in room})[0].items())),
        None,
    )  # fmt: skip
    fix = (
        f"--set continual.protect_energy={fits} fits every layer, or " if fits is not None else ""
    ) + "--set continual.protect_full=fit protects the directions worth most that fit"
    return TrainingError(
        f"layer input {group}: the earlier tasks' bases at energy {energy} take {asked} "
        f"directions, leaving {left} of room after the new branch's rank "
        f"({len(over)} layer input(s) like it) and continual.protect_full=refuse",
        fix,
    )


def _unrecorded_error(missing: dict[str, list[str]], exclude: list[str]) -> TrainingError:
    """An earlier task recorded no basis for an input this run would give a branch."""
    group, tasks = next(iter(missing.items()))
    kind = group.rsplit(".", 1)[-1]
    return TrainingError(
        f"layer input {group}: earlier task(s) {', '.join(map(repr, tasks))} recorded no input "
        f"basis for it (their runs gave no branch to the layers reading it, "
        f"continual.protect_exclude); a branch there could move them unguarded "
        f"({len(missing)} layer input(s) like it)",
        "exclude those layers again, e.g. --set "
        f"'continual.protect_exclude=[{', '.join(sorted({*exclude, kind + '$'}))}]'",
    )


def branched_layers(model: Any, exclude: list[str]) -> list[str]:
    """The adapted layers that get a protected branch: those no `exclude` regex matches."""
    import re

    patterns = [re.compile(p) for p in exclude]
    return [name for name, _ in _layers(model) if not any(p.search(name) for p in patterns)]


def _layers(model: Any) -> Any:
    from medqwen_cli.adapters.inject import adapter_layers

    return adapter_layers(model)


def _batches(records: Sequence[Any], collator: Any, size: int) -> Iterable[dict[str, Any]]:
    for start in range(0, len(records), size):
        yield collator(list(records[start : start + size]))


def plan_protect(
    bundle: Any, recipe: Any, parent: str | None, new_tasks: list[str], *, data_dir: Path
) -> ProtectStrategy | None:
    """The protection of a run on `parent` training `new_tasks`, or None when the recipe asks
    for none; reads the train records of every earlier task no stored basis covers, or fails
    naming the task and its path."""
    cfg = recipe.continual
    if not cfg.protect:
        return None
    seed = recipe.train.seed
    earlier = earlier_tasks(bundle, parent, new_tasks)
    version, covered = stored_bases(bundle, parent)
    stored = [t for t in covered if t in earlier]
    from_data = []
    for index, task in enumerate(earlier):
        if task in stored:
            continue
        assert parent is not None  # an earlier task has a version
        try:
            records, checked = task_train_records(
                bundle, recipe, parent, task, data_dir=data_dir, option="--protect"
            )
        except (DataError, RecipeError) as exc:
            raise type(exc)(
                f"{exc.message}; no version of the lineage stored task {task!r}'s input basis, "
                "so --protect needs its data once",
                exc.hint,
            ) from None
        from_data.append((task, sample(records, cfg.protect_records, seed, index), checked))
    return ProtectStrategy(
        energy=cfg.protect_energy, records=cfg.protect_records, earlier=earlier,
        stored_from=version if stored else None, stored_tasks=stored, from_data=from_data,
        seed=seed, own_tasks=list(new_tasks), full=cfg.protect_full,
        exclude=list(cfg.protect_exclude), adapter=recipe.adapter,
        train=recipe.train,
    )  # fmt: skip


# --------------------------------------------------------------------------- branches


def check_room(name: str, n: int, k: int, rank: int) -> None:
    """A branch of rank r needs r input directions outside the basis."""
    if n - k >= rank:
        return
    raise TrainingError(
        f"layer {name}: the earlier tasks' input basis fills {k} of its {n} input directions "
        f"({k / n:.0%}), leaving {n - k} for a new branch of rank {rank}: this layer could not "
        "learn the new task without moving the old ones",
        "lower continual.protect_energy (e.g. --set continual.protect_energy=0.97), or adapt "
        "fewer layers",
    )


def add_protected_branches(
    model: nn.Module,
    bases: dict[str, Tensor],
    groups: dict[str, str],
    cfg: AdapterConfig,
    *,
    layers: list[str] | None = None,
) -> list[Branch]:
    """Freeze every adapter tensor of `model` and give each adapted layer (of `layers`, default
    every one) a new branch in the complement of its group's basis, trainable and kept there
    (`Branch.set_protect`)."""
    import torch

    from medqwen_cli.adapters.branches import attach_branch, branch_init, freeze_adapters
    from medqwen_cli.continual.subspace import complement

    chosen = list(_layers(model))
    if layers is not None:
        chosen = [(name, layer) for name, layer in chosen if name in set(layers)]
    for name, layer in chosen:  # every layer checked before the model changes
        basis = bases.get(groups.get(name, name))
        check_room(name, layer.in_features, 0 if basis is None else basis.shape[1], cfg.rank)
    freeze_adapters(model)
    added = []
    for name, layer in chosen:
        basis = bases.get(groups.get(name, name))
        if basis is None:
            basis = torch.zeros(layer.in_features, 0, dtype=torch.float64)
        init = branch_init(layer.weight, complement(basis), cfg, name, len(layer.branches))
        branch = attach_branch(layer, name, init, cfg)
        for value in branch.own_tensors("trainable").values():
            value.requires_grad_(True)
        branch.set_protect(basis.float())
        added.append(branch)
    return added

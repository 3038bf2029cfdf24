"""Stored bases: the per-task layout round-trips, and bases written before it (one accumulated
basis per layer input, no energies) still load and guard a new branch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from medqwen_cli._io import load_tensors, save_tensors
from medqwen_cli.continual.bases import Bases, load_bases, save_bases
from medqwen_cli.continual.record import CONTINUAL_FILE, PROTECT_FILE
from medqwen_cli.continual.subspace import (
    choose_columns,
    dequantize,
    energy_in,
    new_directions,
    quantize,
    settle,
)

N = 16


@dataclass
class Entry:
    id: str
    tasks: list[str] = field(default_factory=list)


class FakeBundle:
    """The part of `Bundle` the bases read: versions as directories of files."""

    def __init__(self, root: Path, versions: list[str]) -> None:
        self.root, self.versions = root, versions

    def lineage(self, version: str) -> list[Entry]:
        return [Entry(v) for v in self.versions[: self.versions.index(version) + 1]]

    def version_dir(self, version: str) -> Path:
        return self.root / version

    def read_version_info(self, version: str):
        class Info:
            files = {p.name: "" for p in (self.root / version).iterdir()}

        return Info()

    def read_json(self, name: str, version: str):
        return json.loads((self.root / version / name).read_text())


def gram(seed: int, rank: int = 5) -> torch.Tensor:
    x = torch.randn(N, rank, generator=torch.Generator().manual_seed(seed)).double()
    return x @ x.t()


def record(tasks: list[str], added: list[int], files: dict, sizes: dict, schema: int = 2):
    return {
        "schema": schema, "strategy": "protect", "protect_energy": 0.9, "protect_records": 10,
        "protected_tasks": tasks[:-1], "branches": len(tasks) - 1, "branch_params": [],
        "bases": {"tasks": tasks, "sizes": sizes, "guarded": {}, "added": added, "files": files},
        "tasks": {}, "groups": {"q": "q"}, "new_task_energy_in_bases": {},
    }  # fmt: skip


def test_per_task_files_round_trip(tmp_path: Path) -> None:
    bases = Bases()
    bases.add("a", {"q": gram(1)}, 0.9, {"source": "data"})
    bases.add("b", {"q": gram(2)}, 0.9, {"source": "data"})
    for version, index in (("v1", 0), ("v2", 1)):
        (tmp_path / version).mkdir()
        save_bases(bases, tmp_path / version / PROTECT_FILE, [index])
    files = {"v1": [0]}
    sizes = {"q": [N, int(bases.columns["q"].shape[1])]}
    (tmp_path / "v1" / CONTINUAL_FILE).write_text(json.dumps(record(["a"], [0], {}, sizes)))
    (tmp_path / "v2" / CONTINUAL_FILE).write_text(json.dumps(record(["a", "b"], [1], files, sizes)))
    loaded, groups = load_bases(FakeBundle(tmp_path, ["v1", "v2"]), "v2")
    assert loaded.tasks == ["a", "b"] and groups == {"q": "q"}
    # stored in 8 bits, and what a later run reads is exactly what the adding run measured
    assert load_tensors(tmp_path / "v2" / PROTECT_FILE)["1:q:directions"].dtype == torch.int8
    assert torch.equal(loaded.columns["q"], bases.columns["q"])
    cols = loaded.columns["q"]
    torch.testing.assert_close(cols.t() @ cols, torch.eye(cols.shape[1], dtype=cols.dtype))
    assert loaded.owner["q"] == bases.owner["q"]
    for stored, made in zip(loaded.energies["q"], bases.energies["q"], strict=True):
        torch.testing.assert_close(stored, made, atol=1e-6, rtol=0)
    # the cut is the same whether the bases were just made or read back
    for room in (N, 3):  # room for everything; a full layer
        (guard, held), (want, want_held) = loaded.cut(0.9, {"q": room}), bases.cut(0.9, {"q": room})
        torch.testing.assert_close(guard["q"], want["q"], atol=1e-6, rtol=0)
        assert held["q"] == pytest.approx(want_held["q"], abs=1e-6)
    assert all(h >= 0.9 - 1e-9 for h in bases.cut(0.9, {"q": N})[1]["q"])


def test_directions_stay_float32_where_8_bits_would_not_hold_the_energy_asked() -> None:
    bases = Bases()
    bases.add("a", {"q": gram(1)}, 1.0, {"source": "data"})  # the inputs' exact span
    bases.add("b", {"q": gram(2)}, 0.9, {"source": "data"})
    assert bases.stored[(0, "q")][0].dtype == torch.float32 and bases.stored[(0, "q")][1] is None
    assert bases.stored[(1, "q")][0].dtype == torch.int8
    assert bases.cut(1.0, {"q": N})[1]["q"][0] == pytest.approx(1.0, abs=1e-9)


def test_a_settled_8_bit_span_short_of_the_energy_takes_the_next_direction() -> None:
    """Rounding moves the span; where the fewest directions' settled span holds less than the
    energy asked, the next direction is stored as well, until it holds it."""
    n = 256
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * n, n, generator=g, dtype=torch.float64)
    x = x / (1.0 + torch.arange(n, dtype=torch.float64) / 10) ** 2
    c = x.t() @ x
    fewest = new_directions(None, c, 0.999)
    assert energy_in(fewest, c) >= 0.999
    codes, scale = quantize(fewest)
    assert energy_in(settle(None, dequantize(codes, scale)), c) < 0.999  # short: the case tested
    bases = Bases()
    bases.add("a", {"q": c}, 0.999, {"source": "data"})
    codes, scale = bases.stored[(0, "q")]
    assert codes.dtype == torch.int8 and codes.shape[1] == fewest.shape[1] + 1
    assert energy_in(bases.columns["q"], c) >= 0.999
    assert float(bases.energies["q"][0].sum()) == pytest.approx(energy_in(bases.columns["q"], c))


def test_float16_directions_of_an_older_medqwen_are_settled_as_then(tmp_path: Path) -> None:
    cols = torch.linalg.qr(torch.randn(N, 4, generator=torch.Generator().manual_seed(9)))[0]
    half = cols.to(torch.float16)
    (tmp_path / "v1").mkdir()
    save_tensors(tmp_path / "v1" / PROTECT_FILE, {"0:q:directions": half})
    (tmp_path / "v1" / CONTINUAL_FILE).write_text(json.dumps(record(["a"], [0], {}, {"q": [N, 4]})))
    loaded, _ = load_bases(FakeBundle(tmp_path, ["v1"]), "v1")
    assert torch.equal(loaded.columns["q"], settle(None, half))
    assert loaded.energies["q"] == [None]


def test_float32_directions_of_an_older_medqwen_read_as_stored(tmp_path: Path) -> None:
    made = Bases()
    made.add("a", {"q": gram(1)}, 0.9, {"source": "data"})
    (tmp_path / "v1").mkdir()
    cols = torch.linalg.qr(torch.randn(N, 4, generator=torch.Generator().manual_seed(8)))[0]
    energy = torch.full((4,), 0.2)
    save_tensors(tmp_path / "v1" / PROTECT_FILE, {"0:q:directions": cols, "0:q:energy": energy})
    sizes = {"q": [N, 4]}
    (tmp_path / "v1" / CONTINUAL_FILE).write_text(json.dumps(record(["a"], [0], {}, sizes)))
    loaded, _ = load_bases(FakeBundle(tmp_path, ["v1"]), "v1")
    assert torch.equal(loaded.columns["q"], cols.double())  # not re-orthonormalised


def test_bases_of_an_older_medqwen_load_whole_and_cut_in_order(tmp_path: Path) -> None:
    old = torch.linalg.qr(torch.randn(N, 6, generator=torch.Generator().manual_seed(4)))[0]
    (tmp_path / "v1").mkdir()
    save_tensors(tmp_path / "v1" / PROTECT_FILE, {"q": old.contiguous()})
    legacy = record(["a", "b"], [], {}, {"q": [N, 6]}, schema=1)
    for key in ("added", "files"):
        del legacy["bases"][key]
    del legacy["schema"]  # files of then had no schema field
    (tmp_path / "v1" / CONTINUAL_FILE).write_text(json.dumps(legacy))
    loaded, _ = load_bases(FakeBundle(tmp_path, ["v1"]), "v1")
    assert loaded.tasks == ["a", "b"] and loaded.origin == ["v1", "v1"]
    torch.testing.assert_close(loaded.columns["q"], old.double())
    guard, held = loaded.cut(0.99, {"q": N})
    assert guard["q"].shape[1] == 6 and held["q"] == [None, None]  # whole: energies unknown
    guard, _ = loaded.cut(0.99, {"q": 4})  # full: the first columns, in the order added
    torch.testing.assert_close(guard["q"], old.double()[:, :4])
    # a new task's directions go after the old ones, which stay as they were
    loaded.add("c", {"q": gram(3)}, 0.9, {"source": "data"})
    torch.testing.assert_close(loaded.columns["q"][:, :6], old.double())
    keep, _ = choose_columns(loaded.owner["q"], [None, None, loaded.energies["q"][2]], 0.9, N)
    assert keep[:6].all()

"""The sequence study end to end on the tiny preset (--quick): cells written as they finish,
the first task shared by digest, protect reading no old data, and the report's tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_tables import run_script, tables

from medqwen_cli.data.synthetic.sequence import SEQUENCE


def test_quick_study_and_report(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    args = ["--quick", "--methods", "lora", "--strategies", "none", "protect", "protect:0.999",
            "joint", "--out", str(tmp_path / "out"), "--results", str(results)]  # fmt: skip
    run_script("sequence_study.py", *args)
    cells = json.loads(results.read_text())["cells"]
    assert set(cells) == {"lora/0/none", "lora/0/protect", "lora/0/protect:0.999", "lora/0/joint"}
    none, protect = cells["lora/0/none"], cells["lora/0/protect"]
    assert none["first"]["sha256"] == protect["first"]["sha256"]  # one first version
    # an energy above the shared first version's: the first task trained again in the cell,
    # the same adapter bit for bit (checked by the study), a basis holding more
    richer = cells["lora/0/protect:0.999"]
    assert richer["first"]["sha256"] == protect["first"]["sha256"]
    assert richer["steps"][0]["scores"] == protect["steps"][0]["scores"]
    size = [c["steps"][0]["costs"]["bytes"]["protect.safetensors"] for c in (protect, richer)]
    assert size[1] > size[0]
    assert [s["task"] for s in protect["steps"]] == [t.removeprefix("builtin:") for t in SEQUENCE]
    tasks = [s["task"] for s in protect["steps"]]
    for i, step in enumerate(protect["steps"]):  # seen and next unseen; template: just learned
        template = tasks if i == len(tasks) - 1 else [tasks[i]]
        assert set(step["scores"]["tasks"]) == {
            *tasks[: i + 2],
            *(f"{t}-template" for t in template),
        }
    assert none["steps"][0]["scores"] == protect["steps"][0]["scores"]  # scored once, shared
    last = protect["steps"][-1]["continual"]
    assert last["branches"] == 4 and all(
        s != "data" for t, s in last["bases_from"].items() if t != "seq-thyroid"
    )
    # resumable: a rerun finds every cell done and trains nothing
    run_script("sequence_study.py", *args)
    assert json.loads(results.read_text())["cells"] == cells
    report = run_script("sequence_report.py", "--results", str(results), "--figure",
                        str(tmp_path / "fig.png"))  # fmt: skip
    code = {c["env"]["code"] for c in cells.values()}  # the commit that ran them, recorded
    assert len(code) == 1 and f"Code: {code.pop()} (4 cells)" in report
    found = tables(report)
    summary = next(t for t in found if "BWT" in t[0])
    assert {(r["strategy"], r["seeds"]) for r in summary} == {
        ("none", "0"),
        ("protect:0.99", "0"),  # named by the energy it ran at: the default's
        ("protect:0.999", "0"),
        ("joint", "0"),
    }
    (targets,) = [t for t in found if "measure" in t[0]]
    assert {"protect:0.99 (seeds 0)", "none (seeds 0)"} <= set(targets[0])
    assert targets[-1]["measure"].endswith("bootstrap over records")
    matrices = [t for t in found if "after" in t[0]]
    assert len(matrices) == 3 and all(len(m) == 5 for m in matrices)
    assert matrices[0][0]["seq-derm"] == ""  # after the first task: itself and the next only
    costs = next(t for t in found if "train s" in t[0])
    assert len(costs) == 1 + 5 + 5 + 5, len(costs)
    layers = next(t for t in found if "least energy held" in t[0])
    assert [r["task"] for r in layers] == 2 * [t.removeprefix("builtin:") for t in SEQUENCE[1:]]
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_probe_retrains_one_task_on_a_scratch_copy(tmp_path: Path) -> None:
    """sequence_probe.py: from a cell's version before seq-derm, seq-derm trained otherwise and
    the seen tasks scored; the cell's own bundle is not touched; a rerun skips the probe."""
    from medqwen_cli.bundle import Bundle

    out = tmp_path / "out"
    run_script("sequence_study.py", "--quick", "--methods", "lora", "--strategies", "protect",
               "--out", str(out), "--results", str(tmp_path / "results.json"))  # fmt: skip
    cell = out / "lora-seed0" / "protect"
    before = [v.id for v in Bundle.open(cell / "bundle").manifest.versions]
    args = ["--cell", str(cell), "--task", "seq-derm", "--label", "none",
            "--out", str(tmp_path / "probes"), "--results", str(tmp_path / "probes.json")]  # fmt: skip
    run_script("sequence_probe.py", *args)
    (probe,) = json.loads((tmp_path / "probes.json").read_text())["cells"].values()
    assert list(probe["acc"]) == ["seq-cxr", "seq-ct", "seq-derm"] and probe["sets"] == []
    assert [v.id for v in Bundle.open(cell / "bundle").manifest.versions] == before
    text = (tmp_path / "probes.json").read_text()
    run_script("sequence_probe.py", *args)
    assert (tmp_path / "probes.json").read_text() == text  # found, not trained again


def test_strategy_names_give_their_settings() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from sequence_study import sets_of

    assert sets_of("protect") == ["continual.protect=true"]
    assert sets_of("replay:0.25:50") == ["continual.replay=0.25", "continual.replay_per_task=50"]
    assert sets_of("protect:0.9+replay:0.1:50") == [
        "continual.protect=true", "continual.protect_energy=0.9",
        "continual.replay=0.1", "continual.replay_per_task=50",
    ]  # fmt: skip
    assert sets_of("replay:0.1+protect") == [
        "continual.replay=0.1", "continual.protect=true",
    ]  # fmt: skip
    assert sets_of("protect@steps=100,lr=0.0006") == [
        "continual.protect=true", "train.max_steps=100", "train.lr=0.0006",
    ]  # fmt: skip
    assert sets_of("protect@exclude=down_proj") == [
        "continual.protect=true", "continual.protect_exclude=[down_proj]",
    ]  # fmt: skip
    bad = ("protect+protect:0.9", "none+replay:0.1", "replay:x", "protect@100", "protect@lr=x")
    for name in bad:
        with pytest.raises(ValueError):
            sets_of(name)


def test_an_interrupted_cell_goes_on_after_its_last_finished_task(tmp_path: Path, monkeypatch):
    """Stopped after seq-mammo's version was written, before it was scored: the same command
    trains no task again (seq-mammo's run is found done) and the cell ends as one run would."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import sequence_study

    from medqwen_cli.bundle import Bundle
    from medqwen_cli.training import run

    class Stop(Exception):  # the kill: anything that ends the process there
        pass

    real, calls, stops = run.continue_bundle, [], ["seq-mammo"]

    def stopping(root, *, task, **kw):
        calls.append(task)
        result = real(root, task=task, **kw)
        if task in stops:
            stops.remove(task)
            raise Stop
        return result

    monkeypatch.setattr(run, "continue_bundle", stopping)
    results, out = tmp_path / "results.json", tmp_path / "out"
    args = ["--quick", "--methods", "lora", "--strategies", "protect", "--out", str(out),
            "--results", str(results)]  # fmt: skip
    with pytest.raises(Stop):
        sequence_study.main(args)
    cell_dir = out / "lora-seed0" / "protect"
    saved = json.loads((cell_dir / sequence_study.PROGRESS).read_text())
    assert [s["task"] for s in saved["steps"]] == ["seq-cxr", "seq-ct", "seq-derm"]
    assert not results.exists()
    calls.clear()
    sequence_study.main(args)
    assert calls == ["seq-mammo", "seq-thyroid"]  # seq-mammo: found, not trained again
    cell = json.loads(results.read_text())["cells"]["lora/0/protect"]
    assert [s["task"] for s in cell["steps"]] == [t.removeprefix("builtin:") for t in SEQUENCE]
    assert cell["steps"][:3] == saved["steps"]
    assert cell["resumed"]["after_task"] == "seq-derm" and cell["seconds"] > saved["seconds"]
    mammo = cell["steps"][3]
    assert "command_seconds" not in mammo and mammo["seconds"] > 0  # training time kept
    assert "command_seconds" in cell["steps"][4]
    versions = [v.id for v in Bundle.open(cell_dir / "bundle").manifest.versions]
    assert len(versions) == 6  # init, then one version per task: nothing trained twice
    # another setting is another cell: it starts over instead of going on
    assert sequence_study.resume_point(cell_dir, sequence_study.argparse.Namespace(
        steps=3, samples=8, base="tiny-qwen2-vl")) is None  # fmt: skip


def test_protect_cells_are_named_by_the_energy_they_ran_at() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from sequence_report import label

    def cell(strategy: str, energy: float | None) -> dict:
        later = {"continual": {} if energy is None else {"protect_energy": energy}}
        return {"strategy": strategy, "steps": [{}, later, later]}

    assert label(cell("protect", 0.99)) == "protect:0.99"
    assert label(cell("protect", 0.999)) == "protect:0.999"  # another default, another name
    assert label(cell("protect@lr=0.0006", 0.99)) == "protect:0.99@lr=0.0006"
    assert label(cell("protect:0.999", 0.999)) == "protect:0.999"
    assert label(cell("replay:0.1:50+protect", 0.97)) == "replay:0.1:50+protect:0.97"
    assert label(cell("none", None)) == "none" and label(cell("protect", None)) == "protect"

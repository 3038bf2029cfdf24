"""The forgetting study's recipes, statistics and report (the runs themselves are long)."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
from pathlib import Path

import pytest

from medqwen_cli.recipe import build_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks/forgetting_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("forgetting_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(**kw) -> argparse.Namespace:
    base = {"base": "tiny-qwen2-vl", "steps": 4, "lr": 1e-3, "batch": 8, "samples": 100,
            "eval_every": 10}  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_recipes_are_valid_matched_rank_and_variants_typed(study) -> None:
    lora = build_recipe(study.recipe_for(args(), "lora", 3), check_paths=False)
    ss = build_recipe(
        study.recipe_for(args(), "sslora", 3, ["adapter.rho=1", "adapter.balance_loss=0.0"]),
        check_paths=False,
    )
    assert lora.adapter.rank == ss.adapter.rank == 16 and ss.adapter.num_experts == 4
    assert ss.adapter.rho == 1 and ss.adapter.balance_loss == 0.0 and ss.adapter.seed == 3
    assert lora.train.batch_size == 8 and lora.eval.max_samples == 100
    assert set(lora.tasks) == {"cxr-rules", "derm-rules", "ct-rules"}
    assert study.label_of("sslora", ["adapter.rho=1"]) == "sslora adapter.rho=1"


def test_sign_flip_p_matches_a_brute_force_count(study) -> None:
    diffs = [0.1, 0.2, -0.05, 0.15]
    assert study.sign_flip_p(diffs) == pytest.approx(4 / 16)  # as observed, or -0.05 flipped; x2
    assert study.sign_flip_p([0.1] * 6) == pytest.approx(2 / 64)  # the smallest p at n = 6
    assert study.sign_flip_p([0.1, -0.1]) == 1.0
    d = [0.3, -0.1, 0.2, 0.05, -0.02]
    count = sum(
        abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= abs(sum(d)) - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    assert study.sign_flip_p(d) == pytest.approx(count / 32)


def test_t_interval_is_centred_and_widens_with_spread(study) -> None:
    mean, lo, hi = study.t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and lo < mean < hi
    half = 4.302652729911275 * statistics.stdev([0.1, 0.2, 0.3]) / 3**0.5  # t(0.975, 2)
    assert hi - mean == pytest.approx(half)
    assert study.t_interval([0.4]) == (0.4, 0.4, 0.4)


def fake_run(study, label: str, seed: int, a_after_a: float, a_after_b: float) -> dict:
    def scores(acc: float, nll: float) -> dict:
        # ids that are no A eval record: both count as uncontradicted
        return {"acc": acc, "nll": nll, "n": 100, "records": [["x-0", 1, 0.9], ["x-1", 0, 0.2]]}

    return {
        "method": label.split()[0], "label": label, "seed": seed, "trainable_params": 10,
        "settings": {}, "after_A": {study.TASK_A: scores(a_after_a, 0.2)},
        "pairs": {"conflict": {
            "task": study.TASK_B, "curve": [[0, a_after_a, 0.2], [10, a_after_b, 0.9]],
            "scores": {study.TASK_A: scores(a_after_b, 0.9), study.TASK_B: scores(0.9, 0.1)},
        }},
    }  # fmt: skip


def test_summary_reports_intervals_and_paired_differences(study) -> None:
    runs = [fake_run(study, "lora", s, 0.95, 0.40 + 0.01 * s) for s in range(6)]
    runs += [fake_run(study, "sslora", s, 0.95, 0.60 + 0.01 * s) for s in range(6)]
    table = study.summarise(runs, "conflict")
    rows = [line for line in table.splitlines() if line.startswith("| sslora - lora |")]
    after_b = next(r for r in rows if "| A after B |" in r)
    # sslora retains 0.2 more on every seed: interval [0.2, 0.2], p = 2/64, 6 of 6 seeds
    assert "0.200 [0.200, 0.200]" in after_b and "| 0.031 |" in after_b and "6/6" in after_b
    drop = next(r for r in rows if "| drop of A |" in r)
    assert drop.split("|")[4].strip().startswith("-0.200")
    lora_row = next(line for line in table.splitlines() if line.startswith("| lora | 6 |"))
    assert "0.950" in lora_row
    assert study.summarise(runs, "control") == "(no finished control runs)"
    curve = study.curve_table(runs, "conflict").splitlines()
    assert curve[0] == "| method | step 0 | step 10 |"
    assert curve[2] == "| lora | 0.950 | 0.425 |"


def test_curves_plot_is_written(study, tmp_path: Path) -> None:
    runs = [fake_run(study, "lora", s, 0.95, 0.4) for s in range(2)]
    base = {study.TASK_A: {"acc": 0.6, "nll": 0.7}}
    out = tmp_path / "curves.png"
    study.plot_curves(runs, base, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tradeoff_plot_is_written(study, tmp_path: Path) -> None:
    runs = [fake_run(study, "lora", s, 0.95, 0.4) for s in range(3)]
    runs += [fake_run(study, "lora replay:0.1:50", s, 0.95, 0.93) for s in range(3)]
    out = tmp_path / "tradeoff.png"
    study.plot_tradeoff(runs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_study_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ)  # the test session's cache dir (conftest) included
    # two workers: the cells of one (method, seed) run at once and wait on its A phase
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path), "--workers", "2",
           "--pairs", "conflict", "--plot", str(tmp_path / "curves.png"),
           "--strategies", "none", "replay:0.25:4", "protect:0.5", "joint"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(r["label"], r["strategy"]) for r in results["runs"]} == {
        ("lora", "none"), ("sslora", "none"),
        ("lora replay:0.25:4", "replay:0.25:4"), ("sslora replay:0.25:4", "replay:0.25:4"),
        ("lora protect:0.5", "protect:0.5"), ("sslora protect:0.5", "protect:0.5"),
        ("lora joint", "joint"), ("sslora joint", "joint"),
    }  # fmt: skip
    by = {(r["label"], r["seed"]): r for r in results["runs"]}
    # both strategies continued from the same A version
    assert by[("lora", 0)]["after_A"] == by[("lora replay:0.25:4", 0)]["after_A"]
    assert by[("lora", 0)]["env"]["base_fingerprint"] == results["base_settings"]["fingerprint"]
    assert "| lora replay:0.25:4 - lora | 1 | A after B |" in done.stdout
    assert "s/step of B" in done.stdout
    protect = by[("sslora protect:0.5", 0)]["pairs"]["conflict"]
    assert protect["continual"]["branches"] == 1  # B trained in a branch guarding A
    assert protect["continual"]["bases_from"] == {"cxr-rules": "data", "derm-rules": "data"}
    joint = by[("lora joint", 0)]["pairs"]["conflict"]
    assert joint["steps"] == 8 and joint["continual"] is None  # A and B mixed, twice the steps
    run = by[("lora", 0)]
    conflict = run["pairs"]["conflict"]
    assert [p[0] for p in conflict["curve"]] == [0, 2, 4]  # step 0, every 2, the last
    assert all(p[1] is not None and p[2] is not None for p in conflict["curve"])
    assert len(conflict["scores"]["cxr-rules"]["records"]) == 8  # per-record p(reference)
    assert set(run["after_A"]) == {"cxr-rules", "derm-rules", "ct-rules"}
    assert "## conflict: cxr-rules -> derm-rules" in done.stdout
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # a second invocation finds every job done: nothing is trained again
    again = subprocess.run(cmd + ["--pairs", "conflict"], capture_output=True, text=True,
                           env=env, timeout=600)  # fmt: skip
    assert again.returncode == 0 and "seed 0" not in again.stderr


def test_the_docs_tables_are_the_committed_results_report(study) -> None:
    """docs/forgetting-study.md's tables are the report of the committed results file, so a
    number in the docs cannot drift from the data behind it."""
    import json

    repo = SCRIPT.parents[1]
    results = json.loads((repo / "benchmarks/results/forgetting-study-rules.json").read_text())
    text = study.report(results, None)
    doc = (repo / "docs/forgetting-study.md").read_text()
    for pair in study.PAIRS:
        part = text.split(f"## {pair}:")[1].split("\n", 1)[1]
        part = part.split("\n## ")[0].split("\ndefinitions:")[0].strip()
        start, end = f"<!-- {pair}:start -->\n", f"<!-- {pair}:end -->"
        assert doc.split(start)[1].split(end)[0].strip() == part, pair


def test_report_pairs_only_runs_on_the_base_the_zero_shot_row_used(study) -> None:
    """Runs on another build of the base are another model: left out, and the report says so."""

    def on(fingerprint: str | None, run: dict) -> dict:
        return {**run, "env": {"base_fingerprint": fingerprint, "cpu": "cpu X",
                               "torch": "2.13.0", "threads": 1}} if fingerprint else run  # fmt: skip

    runs = [on("aaaa", fake_run(study, "lora", s, 0.95, 0.40)) for s in range(3)]
    runs += [on("aaaa", fake_run(study, "sslora", s, 0.95, 0.60)) for s in range(2)]
    runs += [on("bbbb", fake_run(study, "sslora", 2, 0.95, 0.10))]  # seed 2 on another build
    runs += [on(None, fake_run(study, "sslora", 3, 0.95, 0.10))]  # fingerprint not recorded
    results = {"runs": runs, "base_settings": {"fingerprint": "aaaa"}}
    used, notes = study.comparable(results, None)
    assert [(r["label"], r["seed"]) for r in used] == [
        ("lora", 0),
        ("lora", 1),
        ("lora", 2),
        ("sslora", 0),
        ("sslora", 1),
    ]
    text = study.report(results, None)
    assert (
        "left out: 1 run(s) on base fingerprint bbbb, 1 run(s) on base fingerprint not recorded"
        in text
    )
    assert "ran on: cpu X, torch 2.13.0, 1 thread(s) (5 runs)" in text
    pair = next(
        line for line in text.splitlines() if line.startswith("| sslora - lora | 2 | A after B |")
    )
    assert "0.200 [0.200, 0.200]" in pair  # seed 2's other-build run is not paired with lora's
    # a results file from before fingerprints were recorded pairs its runs as before
    legacy = {"runs": [fake_run(study, "lora", 0, 0.9, 0.4)], "base_settings": {}}
    assert study.comparable(legacy, None) == (legacy["runs"], [])


def test_targets_table_says_which_configuration_keeps_a_and_learns_b(study) -> None:
    def protected(seed: int, a_after_b: float) -> dict:
        run = fake_run(study, "lora protect:0.99", seed, 1.0, a_after_b)
        run["strategy"] = "protect:0.99"
        run["pairs"]["conflict"]["scores"][study.TASK_B]["acc"] = 0.97
        run["pairs"]["conflict"]["continual"] = {"branch_params": [25]}
        return run

    runs = [fake_run(study, "lora", s, 1.0, 0.40) for s in range(3)]
    assert study.targets_table(runs, "conflict") == ""  # no strategy: no targets block
    runs += [protected(s, 0.96) for s in range(3)]
    table = study.targets_table(runs, "conflict").splitlines()
    assert (
        table[2].startswith("| lora | 3 | 0.400 [0.400, 0.400] | 0.900")
        and "| no | 10 | 0 |" in table[2]
    )
    assert (
        table[3].startswith("| lora protect:0.99 | 3 | 0.960") and "| yes | 10 | 25 |" in table[3]
    )


def test_continual_docs_tables_are_the_committed_strategy_study_report(study) -> None:
    """docs/continual.md's answer (the targets table) and its full tables are the report of the
    committed strategy-study results, so they cannot drift from the data."""
    import json

    repo = SCRIPT.parents[1]
    results = json.loads((repo / "benchmarks/results/continual-strategies.json").read_text())
    text = study.report(results, None)
    conflict = text.split("## conflict:")[1].split("\n", 1)[1].split("\n## ")[0]
    targets = conflict.split("Targets (kept >= 0.95 of A with B after B >= 0.95):\n")[1].strip()
    full = conflict.split("\nTargets (")[0].strip()
    doc = (repo / "docs/continual.md").read_text()
    for name, part in (("targets", targets), ("tables", full)):
        start, end = f"<!-- strategies-{name}:start -->\n", f"<!-- strategies-{name}:end -->"
        assert doc.split(start)[1].split(end)[0].strip() == part, name

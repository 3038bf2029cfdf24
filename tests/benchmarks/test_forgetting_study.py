"""The forgetting study end to end on the tiny preset, its recipes, and the docs tables built
from its committed results (the statistics and report: test_study_report.py)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medqwen_cli.recipe import build_recipe

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks/forgetting_study.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import study_run  # noqa: E402
import study_stats  # noqa: E402


def args(**kw) -> argparse.Namespace:
    base = {"base": "tiny-qwen2-vl", "steps": 4, "lr": 1e-3, "batch": 8, "samples": 100,
            "eval_every": 10}  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_recipes_are_valid_matched_rank_and_variants_typed() -> None:
    lora = build_recipe(study_run.recipe_for(args(), "lora", 3), check_paths=False)
    ss = build_recipe(
        study_run.recipe_for(args(), "sslora", 3, ["adapter.rho=1", "adapter.balance_loss=0.0"]),
        check_paths=False,
    )
    assert lora.adapter.rank == ss.adapter.rank == 16 and ss.adapter.num_experts == 4
    assert ss.adapter.rho == 1 and ss.adapter.balance_loss == 0.0 and ss.adapter.seed == 3
    assert lora.train.batch_size == 8 and lora.eval.max_samples == 100
    assert set(lora.tasks) == {"cxr-rules", "derm-rules", "ct-rules"}
    assert study_run.label_of("sslora", ["adapter.rho=1"]) == "sslora adapter.rho=1"


def test_quick_study_runs_end_to_end_resumes_and_keeps_one_a_version(tmp_path: Path) -> None:
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
    # every strategy continued from the same A version, the one the results file names
    reference = {v["label"]: v for v in results["a_versions"]}
    assert set(reference) == {"lora", "sslora"} and "machine" not in results
    for run in results["runs"]:
        assert study_stats.a_digest(run) == run["A"]["digest"] == reference[run["method"]]["digest"]
        assert len(run["A"]["adapter_sha256"]) == 64
        assert run["pairs"]["conflict"]["env"]["cpu"] == study_run.cpu_model()  # per cell
    assert by[("lora", 0)]["env"]["base_fingerprint"] == results["base_settings"]["fingerprint"]
    assert "| lora replay:0.25:4 - lora | 1 | A after B |" in done.stdout
    assert "| lora protect:0.5 - lora joint | 1 | A lost |" in done.stdout
    assert "s/step of B" in done.stdout and "| A gained | A lost |" in done.stdout
    protect = by[("sslora protect:0.5", 0)]["pairs"]["conflict"]
    assert protect["continual"]["branches"] == 1  # B trained in a branch guarding A
    assert protect["continual"]["bases_from"] == {"cxr-rules": "data", "derm-rules": "data"}
    joint = by[("lora joint", 0)]["pairs"]["conflict"]
    assert joint["steps"] == 8 and joint["continual"] is None  # A and B mixed, twice the steps
    conflict = by[("lora", 0)]["pairs"]["conflict"]
    assert [p[0] for p in conflict["curve"]] == [0, 2, 4]  # step 0, every 2, the last
    assert all(p[1] is not None and p[2] is not None for p in conflict["curve"])
    assert len(conflict["scores"]["cxr-rules"]["records"]) == 8  # per-record p(reference)
    assert set(by[("lora", 0)]["after_A"]) == {"cxr-rules", "derm-rules", "ct-rules"}
    assert "## conflict: cxr-rules -> derm-rules" in done.stdout
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # a second invocation finds every job done: nothing is trained again
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "seed 0" not in again.stderr
    # a new cell whose (method, seed) the results file pairs with another A version stops
    for version in results["a_versions"]:
        version["digest"], version["cpu"] = "0123456789abcdef", "another CPU"
    (tmp_path / "results.json").write_text(json.dumps(results))
    other = cmd[: cmd.index("--strategies")] + ["--strategies", "replay:0.5:4"]
    refused = subprocess.run(other, capture_output=True, text=True, env=env, timeout=600)
    assert refused.returncode == 1
    assert "is not the one the results file pairs (0123456789abcdef, trained on another CPU)" in (
        refused.stderr
    )
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 8  # nothing added


@pytest.mark.parametrize(
    "doc", ["docs/continual.md", "docs/forgetting-study.md", "docs/sequence.md", "README.md"]
)
def test_the_docs_tables_are_the_committed_results_report(doc: str) -> None:
    """The docs' tables are the report of the committed results files, so a number in the
    docs cannot drift from the data behind it (scripts/fill_continual_docs.py writes them)."""
    spec = importlib.util.spec_from_file_location("fill", REPO / "scripts/fill_continual_docs.py")
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    assert (REPO / doc).read_text(encoding="utf-8") == fill.filled(doc)


def test_rerun_compare_counts_changed_answers_and_skips_other_a_versions() -> None:
    import rerun_compare

    def run(seed: int, digest: str, records: list) -> dict:
        acc = sum(r[1] for r in records) / len(records)
        scores = {"cxr-rules": {"acc": acc, "records": records}}
        return {"method": "lora", "seed": seed, "strategy": "protect:0.99",
                "A": {"digest": digest}, "pairs": {"conflict": {"scores": scores}}}  # fmt: skip

    reference = {"runs": [run(0, "a0", [["r1", 1, 0.9], ["r2", 0, 0.2]]),
                          run(1, "a1", [["r1", 1, 0.9]])]}  # fmt: skip
    rerun = {"runs": [run(0, "a0", [["r1", 1, 0.8], ["r2", 1, 0.6]]),
                      run(1, "other", [["r1", 1, 0.9]])]}  # fmt: skip
    lines, differ, total = rerun_compare.compare(reference, rerun)
    assert (differ, total) == (1, 2)
    assert "1 of 2 | 4.0e-01" in lines[2] and "0.500 -> 1.000" in lines[2]
    assert "not in the reference from this A version" in lines[3]

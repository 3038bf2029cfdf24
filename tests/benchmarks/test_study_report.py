"""The forgetting study's statistics and report on small results fixtures (no model runs)."""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import study_report as rep  # noqa: E402
import study_run  # noqa: E402
import study_stats as st  # noqa: E402


def test_sign_flip_p_matches_a_brute_force_count() -> None:
    diffs = [0.1, 0.2, -0.05, 0.15]
    assert st.sign_flip_p(diffs) == pytest.approx(4 / 16)  # as observed, or -0.05 flipped; x2
    assert st.sign_flip_p([0.1] * 6) == pytest.approx(2 / 64)  # the smallest p at n = 6
    assert st.sign_flip_p([0.1, -0.1]) == 1.0
    d = [0.3, -0.1, 0.2, 0.05, -0.02]
    count = sum(
        abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= abs(sum(d)) - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    assert st.sign_flip_p(d) == pytest.approx(count / 32)


def test_t_interval_is_centred_and_widens_with_spread() -> None:
    mean, lo, hi = st.t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and lo < mean < hi
    half = 4.302652729911275 * statistics.stdev([0.1, 0.2, 0.3]) / 3**0.5  # t(0.975, 2)
    assert hi - mean == pytest.approx(half)
    assert st.t_interval([0.4]) == (0.4, 0.4, 0.4)


def rows(pattern: str) -> list[list]:
    """Per-record rows [id, correct, p] of A's records x-0, x-1, ... from '1' / '0' per record
    (ids that are no A eval record: all count as uncontradicted)."""
    return [[f"x-{i}", int(c), 0.9 if c == "1" else 0.2] for i, c in enumerate(pattern)]


def fake_run(label: str, seed: int, after_a: str, after_b: str, loss_a: float = 0.1) -> dict:
    """A cell whose A records are `after_a` right after A and `after_b` after B (see `rows`)."""

    def scores(pattern: str, nll: float) -> dict:
        acc = pattern.count("1") / len(pattern)
        return {"acc": acc, "nll": nll, "n": len(pattern), "records": rows(pattern)}

    method, *rest = label.split()
    strategy = rest[-1] if rest and (":" in rest[-1] or rest[-1] == "joint") else "none"
    return {
        "method": method, "strategy": strategy, "label": label, "seed": seed,
        "trainable_params": 10, "settings": {}, "loss_A": loss_a,
        "after_A": {st.TASK_A: scores(after_a, 0.2)},
        "pairs": {"conflict": {
            "task": st.TASK_B,
            "curve": [[0, scores(after_a, 0)["acc"], 0.2], [10, scores(after_b, 0)["acc"], 0.9]],
            "scores": {st.TASK_A: scores(after_b, 0.9), st.TASK_B: scores("1111111111", 0.1)},
        }},
    }  # fmt: skip


def test_records_gained_and_lost_are_counted_per_cell_and_judge_the_target() -> None:
    # right after A: 6 of 10; after B: records 0 lost, 6, 7, 8 gained -> 0.8, a ratio of 1.33
    runs = [fake_run("lora protect:0.99", s, "1111110000", "0111111110") for s in range(2)]
    assert st.record_changes(runs[0], "conflict") == (3, 1, 10)
    assert st.MEASURES["kept"][1](runs[0], "conflict") == pytest.approx(0.8 / 0.6)
    assert st.MEASURES["drop of A"][1](runs[0], "conflict") == pytest.approx(-0.2)
    cells = rep.cell_table(runs, "conflict").splitlines()
    assert len(cells) == 4 and all(line.endswith("| 0.600 | 0.800 | 1.000 | 1.333 | 3/10 | 1/10 |")
                                   for line in cells[2:])  # fmt: skip
    (row,) = [line for line in rep.targets_table(runs, "conflict").splitlines()[2:]]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["lora protect:0.99", "2", "0.600 [0.600, 0.600]", "0.800 [0.800, 0.800]",
                         "2 of 20"] and cells[5] == "6 of 20"  # fmt: skip
    # 1 of 10 lost on each seed is above the 5 % target, however far the ratio is above 1
    assert cells[8] == "1.333 [1.333, 1.333]" and cells[9] == "no"
    kept = [fake_run("lora protect:0.99", s, "1111110000", "1111111110") for s in range(2)]
    assert rep.targets_table(kept, "conflict").splitlines()[2].split("|")[10].strip() == "yes"


def test_report_refuses_to_pair_cells_on_different_a_versions() -> None:
    # lora none and replay continued from one A (loss 0.1), protect from a retrained one (0.2)
    runs = [fake_run("lora", s, "1111111111", "1110000000") for s in range(3)]
    runs += [fake_run("lora replay:0.1:50", s, "1111111111", "1111111100") for s in range(3)]
    runs += [fake_run("lora protect:0.99", s, "1111111111", "1111111110", 0.2) for s in range(3)]
    results = {"runs": runs, "base_settings": {}}
    text = rep.report(results, None)
    assert "| lora replay:0.1:50 [A1] - lora [A1] | 3 | A after B |" in text
    assert not any(
        line.startswith("| lora protect:0.99 [A2] - lora ") for line in text.splitlines()
    )
    assert "- lora protect:0.99 - lora: seeds 0, 1, 2" in text  # said, not silently dropped
    digest = st.a_digest(runs[-1])
    assert f"- lora seed 0: A1 {st.a_digest(runs[0])} " in text and f"A2 {digest}" in text
    # the results file's reference decides which version is A1
    ref = [{"label": "lora", "seed": s, "digest": st.a_digest(runs[-1 - s])} for s in range(3)]
    used, _ = rep.comparable({**results, "a_versions": ref}, None)
    assert {r["row"] for r in used if r["strategy"] == "protect:0.99"} == {"lora protect:0.99 [A1]"}
    # a table built on raw runs (no A groups) still refuses a pair across A digests
    table = rep.summarise(runs, "conflict")
    assert "| lora protect:0.99 - lora |" not in table
    assert "- lora protect:0.99 - lora: seeds 0, 1, 2 (A digests differ)" in table
    assert "| lora replay:0.1:50 - lora | 3 | A after B |" in table


def test_a_digest_changes_with_any_score_of_a() -> None:
    run = fake_run("lora", 0, "1111111111", "0")
    other = json.loads(json.dumps(run))
    assert st.a_digest(run) == st.a_digest(other)  # survives a round trip through the file
    other["after_A"][st.TASK_A]["records"][3][2] = 0.900001
    assert st.a_digest(run) != st.a_digest(other)
    other = {**run, "loss_A": run["loss_A"] + 1e-12}
    assert st.a_digest(run) != st.a_digest(other)


def test_a_job_stops_on_an_a_version_the_results_file_does_not_pair(tmp_path: Path) -> None:
    phase = {"version": "v1", "loss": 0.1, "scores": fake_run("lora", 0, "1111", "0")["after_A"],
             "env": {"cpu": "cpu Y"}}  # fmt: skip
    (tmp_path / "after-A.json").write_text(json.dumps(phase))
    digest = st.a_digest({"loss_A": 0.1, "after_A": phase["scores"]})
    job = {"method": "lora", "seed": 0, "expect_a": {"digest": digest, "cpu": "cpu X"}}
    checked = study_run._checked_a(job, tmp_path / "after-A", tmp_path / "after-A.json")
    assert checked["digest"] == digest
    job["expect_a"] = {"digest": "0123456789abcdef", "cpu": "cpu X"}
    with pytest.raises(study_run.StudyError, match="is not the one the results file pairs"):
        study_run._checked_a(job, tmp_path / "after-A", tmp_path / "after-A.json")


def test_summary_reports_intervals_and_paired_differences() -> None:
    runs = [fake_run("lora", s, "1111111111", "1111000000") for s in range(6)]
    runs += [fake_run("sslora", s, "1111111111", "1111110000") for s in range(6)]
    table = rep.summarise(runs, "conflict")
    rows_ = [line for line in table.splitlines() if line.startswith("| sslora - lora |")]
    after_b = next(r for r in rows_ if "| A after B |" in r)
    # sslora retains 0.2 more on every seed: interval [0.2, 0.2], p = 2/64, 6 of 6 seeds
    assert "0.200 [0.200, 0.200]" in after_b and "| 0.031 |" in after_b and "6/6" in after_b
    lost = next(r for r in rows_ if "| A lost |" in r)
    assert lost.split("|")[4].strip().startswith("-0.200")
    lora_row = next(line for line in table.splitlines() if line.startswith("| lora | 6 |"))
    assert "| 1.000 [1.000, 1.000] | 0.400 [0.400, 0.400] |" in lora_row
    assert rep.summarise(runs, "control") == "(no finished control runs)"
    curve = rep.curve_table(runs, "conflict").splitlines()
    assert curve[0] == "| method | step 0 | step 10 |"
    assert curve[2] == "| lora | 1.000 | 0.400 |"


def test_report_pairs_only_runs_on_the_base_the_zero_shot_row_used() -> None:
    """Runs on another build of the base are another model: left out, and the report says so."""

    def on(fingerprint: str | None, run: dict) -> dict:
        return {**run, "env": {"base_fingerprint": fingerprint, "cpu": "cpu X",
                               "torch": "2.13.0", "threads": 1}} if fingerprint else run  # fmt: skip

    runs = [on("aaaa", fake_run("lora", s, "1111111111", "1111000000")) for s in range(3)]
    runs += [on("aaaa", fake_run("sslora", s, "1111111111", "1111110000")) for s in range(2)]
    runs += [on("bbbb", fake_run("sslora", 2, "1111111111", "1000000000"))]  # another build
    runs += [on(None, fake_run("sslora", 3, "1111111111", "1000000000"))]  # not recorded
    results = {"runs": runs, "base_settings": {"fingerprint": "aaaa"}}
    used, notes = rep.comparable(results, None)
    assert [(r["label"], r["seed"]) for r in used] == [
        ("lora", 0), ("lora", 1), ("lora", 2), ("sslora", 0), ("sslora", 1),
    ]  # fmt: skip
    text = rep.report(results, None)
    assert "left out: 1 run(s) on base fingerprint bbbb, 1 run(s) on base fingerprint not " in text
    assert "ran on: cpu X, torch 2.13.0, 1 thread(s) (5 cells)" in text
    pair = next(x for x in text.splitlines() if x.startswith("| sslora - lora | 2 | A after B |"))
    assert "0.200 [0.200, 0.200]" in pair  # seed 2's other-build run is not paired with lora's
    # a results file from before fingerprints were recorded pairs its runs as before
    legacy = {"runs": [fake_run("lora", 0, "11", "10")], "base_settings": {}}
    assert [r["label"] for r in rep.comparable(legacy, None)[0]] == ["lora"]


def test_targets_table_lists_strategies_with_their_added_parameters() -> None:
    def protected(seed: int) -> dict:
        run = fake_run("lora protect:0.99", seed, "1111111111", "1111111111")
        run["pairs"]["conflict"]["continual"] = {"branch_params": [25]}
        return run

    runs = [fake_run("lora", s, "1111111111", "1111000000") for s in range(3)]
    assert rep.targets_table(runs, "conflict") == ""  # no strategy: no targets block
    table = rep.targets_table(runs + [protected(s) for s in range(3)], "conflict").splitlines()
    assert table[2].startswith("| lora | 3 |") and table[2].endswith("| no | 10 | 0 |")
    assert "| 18 of 30 | 0 of 30 |" in table[2]
    assert table[3].startswith("| lora protect:0.99 | 3 |") and table[3].endswith(
        "| yes | 10 | 25 |"
    )


def test_plots_are_written(tmp_path: Path) -> None:
    import study_plots

    runs = [fake_run("lora", s, "1111111111", "1111000000") for s in range(3)]
    runs += [fake_run("lora replay:0.1:50", s, "1111111111", "1111111100") for s in range(3)]
    study_plots.plot_curves(runs, {st.TASK_A: {"acc": 0.6, "nll": 0.7}}, tmp_path / "c.png")
    study_plots.plot_tradeoff(runs, tmp_path / "t.png")
    for name in ("c.png", "t.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

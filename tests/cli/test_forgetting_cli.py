"""`medqwen forgetting-report` on bundles with known evaluations (no model needed)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle

# The worked example of docs/forgetting.md: t1, t2, t3 trained one per version.
EXAMPLE = {
    "base": [0.30, 0.20, 0.40],
    "v0002": [0.80, 0.25, 0.45],
    "v0003": [0.85, 0.90, 0.50],
    "v0004": [0.60, 0.85, 0.75],
}
TASKS = ["t1", "t2", "t3"]


def make_bundle(root: Path, cells: dict[str, list[float | None]], metric: str = "accuracy") -> Path:
    """A bundle whose v0001 trained nothing (as init-experts writes it), then one task per version,
    with one headline evaluation line per known cell (None: never evaluated)."""
    bundle = Bundle.create(root, base={"model_id": "test"}, recipe={})
    adapter = {"layer.lora_A": torch.zeros(2, 2)}
    bundle.append_version(adapter, command="init-experts", tasks=[], recipe={})
    for task in TASKS:
        bundle.append_version(adapter, command="continue", tasks=[task], recipe={})
    lines = []
    for version, row in cells.items():
        for task, value in zip(TASKS, row, strict=True):
            if value is not None:
                lines.append({"version": version, "task": task, "metric": metric, "value": value,
                              "n": 10, "split": "eval", "scoring": "likelihood", "headline": True,
                              "type": "vqa_closed"})  # fmt: skip
                lines.append({"version": version, "task": task, "metric": "n_unparseable",
                              "value": 0, "n": 10, "headline": False})  # fmt: skip
    bundle.append_evals(lines)
    return root


def with_missing(version: str, task: str) -> dict[str, list[float | None]]:
    cells = {v: list(row) for v, row in EXAMPLE.items()}
    cells[version][TASKS.index(task)] = None
    return cells


def test_known_figures_in_json(cli, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "sslora", EXAMPLE)
    result = cli("forgetting-report", b, "--format", "json")
    assert result.code == 0, result.err
    (run,) = json.loads(result.out)["runs"]
    assert run["name"] == "sslora" and run["path"] == str(b)
    assert run["matrix"]["rows"] == ["base", "v0002", "v0003", "v0004"]  # v0001 trained nothing
    assert run["matrix"]["tasks"] == TASKS
    assert run["matrix"]["metrics"] == {t: "accuracy" for t in TASKS}
    assert run["acc"]["value"] == pytest.approx(0.7333333)
    assert run["bwt"]["value"] == pytest.approx(-0.125)
    assert run["fwt"]["value"] == pytest.approx(0.075)
    assert run["forgetting"]["value"] == pytest.approx(0.15)
    t1 = run["per_task"][0]
    assert t1["drop"]["value"] == pytest.approx(0.2) and t1["relative_drop"][
        "value"
    ] == pytest.approx(0.25)
    assert all(run[k]["definition"] for k in ("acc", "bwt", "fwt", "forgetting"))
    assert run["notes"] == []


def test_missing_cell_is_na_never_zero(cli, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", with_missing("v0004", "t1"))
    data = json.loads(cli("forgetting-report", b, "-f", "json").out)["runs"][0]
    assert data["matrix"]["values"][3][0] is None
    assert data["acc"]["value"] is None and data["acc"]["reason"] == "missing R[v0004][t1]"
    assert data["fwt"]["value"] == pytest.approx(0.075)  # does not need the missing cell

    table = cli("forgetting-report", b, "-f", "table")
    assert table.code == 0 and "n/a" in table.out and "missing R[v0004][t1]" in table.out
    assert f"medqwen evaluate {b} --version v0004 --task t1" in table.err  # how to fill it

    rows = list(csv.DictReader(io.StringIO(cli("forgetting-report", b, "-f", "csv").out)))
    cell = next(
        r for r in rows if r["kind"] == "cell" and r["row"] == "v0004" and r["task"] == "t1"
    )
    assert cell["value"] == "n/a"
    acc = next(r for r in rows if r["name"] == "ACC")
    assert acc["value"] == "n/a" and acc["definition"].startswith("ACC = ")
    assert float(next(r for r in rows if r["name"] == "FWT")["value"]) == pytest.approx(0.075)


def test_markdown(cli, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", with_missing("base", "t3"))
    result = cli("forgetting-report", b, "--format", "markdown")
    assert result.code == 0, result.err
    md = result.out
    assert (
        md.startswith("## b\n") and "| row | t1 (accuracy) | t2 (accuracy) | t3 (accuracy) |" in md
    )
    assert "| base | 0.3000 | 0.2000 | n/a |" in md and "| v0002 | 0.8000 * |" in md
    assert "| FWT | n/a | FWT = mean_{j>1}" in md and "missing R[base][t3]" in md
    assert "- drop_j = R[j][j] - R[T][j]" in md


def test_plot_writes_a_png(cli, tmp_path: Path) -> None:
    from PIL import Image

    a = make_bundle(tmp_path / "lora", with_missing("v0003", "t2"))
    b = make_bundle(tmp_path / "sslora", EXAMPLE)
    png = tmp_path / "out" / "forgetting.png"
    result = cli("forgetting-report", a, b, "--plot", png, "-f", "json")
    assert result.code == 0, result.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size[0] == 1300 and image.size[1] > 900  # two runs, one row each


def test_several_bundles_side_by_side(cli, tmp_path: Path) -> None:
    make_bundle(tmp_path / "lora" / "run", {**EXAMPLE, "v0004": [0.1, 0.2, 0.75]})
    make_bundle(tmp_path / "sslora" / "run", EXAMPLE)
    paths = [tmp_path / "lora" / "run", tmp_path / "sslora" / "run"]
    runs = json.loads(cli("forgetting-report", *paths, "-f", "json").out)["runs"]
    assert [r["name"] for r in runs] == ["lora/run", "sslora/run"]  # same dir name: parents added
    assert runs[0]["bwt"]["value"] < runs[1]["bwt"]["value"]
    table = cli("forgetting-report", *paths, "-f", "table")
    assert table.code == 0 and "side by side" in table.out
    md = cli("forgetting-report", *paths, "-f", "markdown").out
    assert "## side by side" in md and "| figure | lora/run | sslora/run | definition |" in md
    rows = list(csv.DictReader(io.StringIO(cli("forgetting-report", *paths, "-f", "csv").out)))
    assert {r["run"] for r in rows} == {"lora/run", "sslora/run"}


def test_default_bundle_and_metric_option(cli, tmp_path: Path, monkeypatch) -> None:
    b = make_bundle(tmp_path / "b", EXAMPLE)
    monkeypatch.chdir(b / "versions")  # a subdirectory: found like git
    run = json.loads(cli("forgetting-report", "-f", "json").out)["runs"][0]
    assert run["acc"]["value"] == pytest.approx(0.7333333)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDQWEN_BUNDLE", str(b))
    run = json.loads(cli("forgetting-report", "--metric", "n_unparseable", "-f", "json").out)[
        "runs"
    ][0]
    assert run["matrix"]["metrics"] == {t: "n_unparseable" for t in TASKS}
    assert run["acc"]["value"] == 0


def test_mixed_scoring_is_flagged(cli, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", EXAMPLE)
    Bundle.open(b).append_evals([{"version": "v0004", "task": "t1", "metric": "accuracy",
                                  "value": 0.5, "scoring": "generate", "headline": True}])  # fmt: skip
    result = cli("forgetting-report", b, "-f", "json")
    assert result.code == 0 and "different scoring modes" in result.err
    assert json.loads(result.out)["runs"][0]["matrix"]["values"][3][0] == 0.5  # later line wins


def test_bad_input(cli, tmp_path: Path, monkeypatch) -> None:
    empty = Bundle.create(tmp_path / "empty", base={}, recipe={}).root
    Bundle.open(empty).append_version({"a": torch.zeros(1)}, command="t", tasks=["t1"], recipe={})
    result = cli("forgetting-report", empty)
    assert result.code == 1 and "has no evaluations" in result.err
    assert "medqwen evaluate" in result.err and "--base-only" in result.err

    untrained = Bundle.create(tmp_path / "untrained", base={}, recipe={})
    untrained.append_version({"a": torch.zeros(1)}, command="init-experts", tasks=[], recipe={})
    untrained.append_evals([{"version": "base", "task": "t1", "metric": "accuracy", "value": 0.1}])
    result = cli("forgetting-report", untrained.root)
    assert result.code == 1 and "no version that trained a task" in result.err
    assert "Hint:" in result.err

    good = make_bundle(tmp_path / "good", EXAMPLE)
    result = cli("forgetting-report", good, "--metric", "bleu_9")
    assert result.code == 1 and "no evaluation records metric 'bleu_9'" in result.err
    assert "accuracy" in result.err  # the hint lists what was recorded

    assert cli("forgetting-report", good, good).code == 1
    assert cli("forgetting-report", good, "--format", "yaml").code == 2
    assert cli("forgetting-report", tmp_path / "nowhere").code == 1
    monkeypatch.chdir(tmp_path)
    result = cli("forgetting-report")
    assert result.code == 1 and "no bundle in" in result.err


def with_curves(root: Path, drop: float) -> Path:
    """Add --watch lines: t1 scored every 10 of 25 steps while v0003 trained t2 (falling from
    R[v0002][t1] = 0.8 by `drop` per point), with a low value at the last step that must never
    reach the matrix."""
    lines = []
    for i, step in enumerate((0, 10, 20, 25)):
        common = {"version": "v0003", "task": "t1", "n": 10, "split": "eval", "step": step,
                  "steps": 25, "eval_every": 10, "scoring": "likelihood", "type": "vqa_closed"}  # fmt: skip
        lines.append({**common, "metric": "accuracy", "value": 0.8 - drop * i, "headline": True})
        lines.append({**common, "metric": "n_unparseable", "value": 0, "headline": False})
    Bundle.open(root).append_evals(lines)
    return root


def test_curves_never_enter_the_matrix_and_are_reported(cli, tmp_path: Path) -> None:
    b = with_curves(make_bundle(tmp_path / "sslora", EXAMPLE), drop=0.1)
    (run,) = json.loads(cli("forgetting-report", b, "-f", "json").out)["runs"]
    assert run["matrix"]["values"][2] == [0.85, 0.90, 0.50]  # R[v0003] as evaluated, no step line
    assert run["bwt"]["value"] == pytest.approx(-0.125) and run["notes"] == []
    (curve,) = run["curves"]
    assert (curve["version"], curve["trained"], curve["task"], curve["metric"]) == (
        "v0003", ["t2"], "t1", "accuracy"
    )  # fmt: skip
    assert [(p["step"], p["value"]) for p in curve["points"]] == [
        (0, 0.8), (10, pytest.approx(0.7)), (20, pytest.approx(0.6)), (25, pytest.approx(0.5))
    ]  # fmt: skip
    assert curve["definition"] == "score of t1 while training v0003 on t2, every 10 steps"

    rows = list(csv.DictReader(io.StringIO(cli("forgetting-report", b, "-f", "csv").out)))
    points = [r for r in rows if r["kind"] == "curve"]
    assert [(r["row"], r["task"], r["step"]) for r in points] == [
        ("v0003", "t1", s) for s in ("0", "10", "20", "25")
    ]
    assert all(r["step"] == "" for r in rows if r["kind"] != "curve")

    md = cli("forgetting-report", b, "-f", "markdown").out
    assert "### sslora: forgetting curves" in md and "| step | t1 (accuracy) |" in md
    assert "| 25 | 0.5000 |" in md
    table = cli("forgetting-report", b, "-f", "table").out
    assert "score of t1 while training v0003 on t2, every 10 steps" in table


def test_plot_draws_the_curves_of_every_run(cli, tmp_path: Path) -> None:
    from PIL import Image

    from medqwen_cli.plots import curve_panels, figure_size_px

    a = with_curves(make_bundle(tmp_path / "lora", EXAMPLE), drop=0.2)
    b = with_curves(make_bundle(tmp_path / "sslora", EXAMPLE), drop=0.02)
    png = tmp_path / "curves.png"
    assert cli("forgetting-report", a, b, "--plot", png, "-f", "json").code == 0
    with Image.open(png) as image:
        assert image.size == figure_size_px(2, curve_rows=1)  # the runs, then one row of curves
    from medqwen_cli.evaluation.bundle_report import forgetting_for_bundles

    ((key, lines),) = curve_panels([r.report for r in forgetting_for_bundles([a, b])])
    assert key == ("t1", ("t2",)) and [run for run, _ in lines] == ["lora", "sslora"]

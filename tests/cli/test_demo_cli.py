"""`medqwen demo --quick` end to end (minimal steps): every matrix cell filled, a plot written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medqwen_cli.bundle import Bundle


@pytest.mark.slow
def test_demo_quick_fills_the_forgetting_matrix(cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = cli(
        "demo", "--quick", "--out", out, "--set", "train.max_steps=2", "--set", "eval.max_samples=6"
    )
    assert result.code == 0, result.err[-2000:]
    assert result.err.count("$ medqwen ") == 17  # every step printed as a command a user can type
    # one line per command, its one-line summary and progress: no JSON dumps, no repeats
    assert len(result.err.splitlines()) < 100, result.err[-3000:]
    assert '"bundle"' not in result.err and "lora v0002 (trained on xray: 2 steps" in result.err
    assert "headline_mean: the unweighted mean" in result.out  # the report's metric, defined
    assert "lora: R[i][j]" in result.out and "sslora: R[i][j]" in result.out  # the report on stdout
    report = json.loads(
        cli("forgetting-report", out / "lora", out / "moelora", out / "sslora", "-f", "json").out
    )
    runs = report["runs"] if isinstance(report, dict) and "runs" in report else report
    assert len(runs) == 3
    for run in runs:
        values = run["matrix"]["values"]
        assert len(values) == 4 and all(v is not None for row in values for v in row), run["name"]
        assert run["acc"]["value"] is not None and run["bwt"]["value"] is not None
    png = out / "forgetting.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train:" in (out / "recipe.yaml").read_text()
    assert 'id="accuracy-matrix"' in (out / "report.html").read_text()  # the demo's last step


def test_demo_refuses_a_non_empty_directory_and_bad_settings(cli, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = cli("demo", "--quick", "--out", tmp_path / "x")
    assert result.code == 1 and "never overwrites" in result.err
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert cli("demo", "--base", "Qwen2-VL", "--out", tmp_path / "y").code == 1
    bad = cli("demo", "--quick", "--out", tmp_path / "z", "--set", "train.lr=fast")
    assert bad.code == 1 and "train.lr" in bad.err and not (tmp_path / "z" / "recipe.yaml").exists()


def test_demo_stops_with_130_when_a_step_is_interrupted(cli, tmp_path: Path, monkeypatch) -> None:
    import medqwen_cli.init_experts

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medqwen_cli.init_experts, "init_experts", interrupted)
    result = cli("demo", "--quick", "--out", tmp_path / "d")
    assert result.code == 130, result.err
    assert "interrupted" in result.err and "demo step 1 failed" not in result.err


@pytest.mark.slow
def test_nano_demo_compares_no_strategy_and_protect_from_one_first_version(
    cli, tmp_path: Path, require_nano
) -> None:
    out = tmp_path / "demo"
    result = cli(
        "demo", "--base", "nano-qwen2-vl", "--quick", "--out", out, "--set", "train.max_steps=2",
        "--set", "eval.max_samples=2", "--set", "continual.protect_records=4",
    )  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    lines = [line for line in result.err.splitlines() if "$ " in line]
    assert [line.split("$ ", 1)[1].split()[:2] for line in lines] == [
        ["medqwen", "init-experts"], ["medqwen", "evaluate"], ["medqwen", "continue"],
        ["cp", "-r"], ["medqwen", "continue"], ["medqwen", "continue"],
        ["medqwen", "forgetting-report"], ["medqwen", "report"],
    ]  # fmt: skip
    assert "--task cxr-rules --protect" in lines[2] and lines[5].endswith("--protect --format json")
    none, protect = (Bundle.open(out / name) for name in ("none", "protect"))
    # both second tasks continued from the same first version
    assert none.read_adapter("v0002").keys() == protect.read_adapter("v0002").keys()
    assert json.loads((out / "protect/versions/v0003/continual.json").read_text())["branches"] == 1
    assert "what each strategy kept of cxr-rules after derm-rules" in result.out
    table = result.out.split("what each strategy kept", 1)[1]
    assert "│ none " in table and "│ protect " in table

"""`medqwen evaluate` end to end on a tiny two-task lineage, then `forgetting-report` on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle
from medqwen_cli.evaluation.outcomes import unpack

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes/debug/tiny.yaml")


def _main(*args: str) -> None:
    from medqwen_cli.cli.app import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None), f"medqwen {' '.join(map(str, args))} exited {exc.code}"


@pytest.fixture(scope="module")
def lineage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """init-experts (v0001), then v0002 trained on xray and v0003 on ct (perturbed adapters)."""
    root = tmp_path_factory.mktemp("eval") / "B"
    settings = ["--set", "eval.max_samples=5", "--set", "eval.max_new_tokens=4"]
    _main("init-experts", "--base", "tiny-qwen2-vl", "--recipe", TINY, "--out", root, *settings,
          "-f", "json")  # fmt: skip
    bundle = Bundle.open(root)
    for seed, task in enumerate(["xray", "ct"]):
        g = torch.Generator().manual_seed(seed)
        adapter = {
            k: v + 0.05 * torch.randn(v.shape, generator=g)
            for k, v in bundle.read_adapter().items()
        }
        bundle.append_version(adapter, command="test", tasks=[task], recipe=bundle.manifest.recipe)
    return root


def test_evaluate_then_forgetting_report(cli, lineage: Path, tmp_path: Path) -> None:
    headlines = {}
    # v0002's lineage holds xray only: ct is asked for, so FWT's cell R[v0002][ct] exists
    for args in (["--version", "v2", "--task", "xray", "--task", "ct"], [], ["--base-only"]):
        preds = tmp_path / f"preds{len(headlines)}.jsonl"
        result = cli("evaluate", lineage, *args, "--save-predictions", preds, "-f", "json")
        assert result.code == 0, result.err
        out = json.loads(result.out)
        assert out["scoring"] == "likelihood" and out["n"] == 10  # 5 per task, 2 tasks
        assert list(out["headlines"]) == ["xray", "ct"]
        headlines[out["version"]] = {t: h["value"] for t, h in out["headlines"].items()}
        lines = [json.loads(line) for line in preds.read_text().splitlines()]
        assert len(lines) == 10 and {line["version"] for line in lines} == {out["version"]}
        assert "samples/s" in result.err
    assert list(headlines) == ["v0002", "v0003", "base"]

    evals = Bundle.open(lineage).read_evals()
    assert {
        "version",
        "task",
        "metric",
        "value",
        "n",
        "split",
        "scoring",
        "headline",
        "type",
    } <= set(evals[0])
    flagged = [e for e in evals if e["headline"]]
    assert len(flagged) == 6 and {e["metric"] for e in flagged} == {"headline_mean"}
    assert {e["split"] for e in evals} == {"eval"} and {e["n"] for e in flagged} == {5}
    shares = [e for e in evals if e["metric"].endswith((".accuracy", ".exact_match"))]
    assert shares and all(e["records"] and "outcomes" in e for e in shares)
    for e in shares:  # which records were right, averaging to the score
        assert sum(unpack(e["outcomes"], e["n"])) / e["n"] == pytest.approx(e["value"])

    report = cli("forgetting-report", lineage, "--format", "json")
    assert report.code == 0, report.err
    (run,) = json.loads(report.out)["runs"]
    m = run["matrix"]
    assert m["rows"] == ["base", "v0002", "v0003"] and m["tasks"] == ["xray", "ct"]
    assert m["values"] == [[headlines[v][t] for t in m["tasks"]] for v in m["rows"]]
    assert all(v is not None for row in m["values"] for v in row)  # every cell was evaluated
    assert run["acc"]["value"] == pytest.approx(sum(m["values"][-1]) / 2)
    assert run["fwt"]["value"] == pytest.approx(m["values"][1][1] - m["values"][0][1])
    assert run["acc"]["definition"].startswith("ACC = mean_j R[T][j]")


def test_table_csv_and_task_option(cli, lineage: Path) -> None:
    result = cli("evaluate", lineage, "--task", "builtin:pathology", "--scoring", "generate",
                 "-f", "csv")  # fmt: skip
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header == "task,type,metric,value,n,headline,reason"
    assert rows[0].startswith("builtin:pathology,mixed,headline_mean,")
    evals = [e for e in Bundle.open(lineage).read_evals() if e["task"] == "builtin:pathology"]
    assert {e["scoring"] for e in evals} == {"generate"} and {e["version"] for e in evals} == {
        "v0003"
    }
    table = cli("evaluate", lineage, "--task", "ct", "-f", "table")
    assert table.code == 0 and "headline_mean *" in table.out and "pope.f1" in table.out


def test_set_overrides_the_stored_recipe_for_this_evaluation_only(cli, lineage: Path) -> None:
    stored = Bundle.open(lineage).manifest.recipe
    result = cli("evaluate", lineage, "--task", "xray", "--set", "eval.max_samples=3",
                 "--set", "eval.batch_size=2", "-f", "json")  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out)["headlines"]["xray"]["n"] == 3  # the stored recipe says 5
    assert Bundle.open(lineage).manifest.recipe == stored  # the bundle keeps its recipe


def test_quiet_drops_the_summary_line_before_or_after_the_command(
    cli, lineage: Path, tmp_path: Path
) -> None:
    args = ["evaluate", lineage, "--task", "xray", "--set", "eval.max_samples=2",
            "--save-predictions", tmp_path / "p.jsonl", "-f", "json"]  # fmt: skip
    loud = cli(*args)
    assert loud.code == 0 and "samples/s" in loud.err and "predictions written" in loud.err
    for quiet in (["-q", *args], [*args, "-q"], ["--quiet", *args]):
        result = cli(*quiet)
        assert result.code == 0 and result.err == "", (quiet, result.err)
        assert json.loads(result.out)["n"] == 2


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--set", "eval.max_sampels=3"], 1, "did you mean 'max_samples'?"),
        (["--set", "eval.max_samples=zero"], 1, "eval.max_samples"),
        (["--set", "adapter.rank=8"], 1, "adapter is fixed by the bundle"),
        (["--task", "no_such_task"], 1, "unknown task 'no_such_task'"),
        (["--task", "xrya"], 1, "did you mean 'xray'"),
        (["--version", "v9"], 1, "bundle has no version v0009"),
        (["--version", "latest"], 1, "bad version 'latest'"),
        (["--scoring", "vote"], 2, "likelihood or generate"),
        (["--version", "v2", "--base-only"], 2, "either --version or --base-only"),
        (["--format", "yaml"], 2, "--format"),
    ],
)
def test_bad_input(cli, lineage: Path, args: list[str], code: int, needle: str) -> None:
    before = len(Bundle.open(lineage).read_evals())
    result = cli("evaluate", lineage, *args)
    assert result.code == code and needle in result.err, result.err
    if code == 1:
        assert "Error:" in result.err and "Hint:" in result.err
    assert len(Bundle.open(lineage).read_evals()) == before  # nothing recorded


def test_predictions_path_is_a_directory(cli, lineage: Path, tmp_path: Path) -> None:
    result = cli("evaluate", lineage, "--save-predictions", tmp_path)
    assert result.code == 1 and "is a directory" in result.err and "Hint:" in result.err


def test_no_bundle_here(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("evaluate")
    assert result.code == 1 and "no bundle in" in result.err and "Hint:" in result.err

"""`medqwen merge` end to end on a tiny bundle, and each bad input as one Error/Hint or usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes/debug/tiny.yaml")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe

    root = tmp_path_factory.mktemp("merge-cli") / "bundle"
    init_experts(load_recipe(TINY, ["eval.max_samples=2"]), root)
    return root


def test_routed_then_dense_from_inside_the_bundle(
    cli, bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(bundle)  # BUNDLE found like git: the current directory
    out = tmp_path / "export"
    result = cli("merge", "--out", out, "-f", "json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["mode"], data["exact"], data["version"]) == ("routed", True, "v0001")
    assert "modeling_medqwen_routed.py" in data["files"] and data["fidelity"] is None
    manifest = json.loads((out / "merge_manifest.json").read_text())
    assert manifest["command"].startswith("medqwen merge --out")

    again = cli("merge", "--out", out)
    assert again.code == 1 and "already exists" in again.err and "--overwrite" in again.err

    dense = cli(
        "merge", "--out", out, "--mode", "dense", "-n", "5", "--overwrite", "--no-eval",
        "-f", "table",
    )  # fmt: skip
    assert dense.code == 0, dense.err
    assert "dense, approximate" in dense.out and "relative logit error" in dense.out
    assert "xray: 4 fit, 1 held out" in dense.out
    report = json.loads((out / "merge_report.json").read_text())
    assert report["mode"] == "dense" and report["fidelity"]["tokens"] > 0
    assert not (out / "modeling_medqwen_routed.py").exists()  # the routed export was replaced
    # stderr is not a terminal here: one plain line as each phase starts, none under -q
    for phase in ("loading v0001", "calibrating mean gates", "writing the dense export",
                  "loading the export back", "measuring fidelity"):  # fmt: skip
        assert f"merge (dense): {phase}" in dense.err, dense.err
    quiet = cli("merge", "--out", out, "-m", "dense", "-n", "3", "--overwrite", "--no-eval", "-q")
    assert quiet.code == 0 and quiet.err == "", quiet.err


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--mode", "sparse"], 2, "is not one of routed, dense, peft"),
        (["--mode", "dense", "--copy-base"], 1, "--copy-base applies to --mode routed only"),
        (["--rank", "4"], 1, "a rank applies to --mode peft only"),
        (["--mode", "peft", "-n", "1"], 1, "at least 2 samples"),
        (["--mode", "dense", "--calibration", "no_such_task"], 1, "unknown task 'no_such_task'"),
        (["--version", "v9"], 1, "bundle has no version v0009"),
    ],
)
def test_bad_input(cli, bundle: Path, tmp_path: Path, args: list[str], code: int, needle: str):
    result = cli("merge", bundle, "--out", tmp_path / "x", *args)
    assert result.code == code and needle in result.err, result.err
    if code == 1:
        assert "Hint:" in result.err
    assert not (tmp_path / "x").exists()


def test_out_is_required(cli, bundle: Path) -> None:
    result = cli("merge", bundle)
    assert result.code == 2 and "--out" in result.err

"""`medqwen init-experts` end to end, and each bad input as one Error/Hint pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes/debug/tiny.yaml")


def test_init_in_current_directory_then_inspect_and_log(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("init-experts", "--base", "tiny-qwen2-vl", "--recipe", TINY, "-f", "json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["bundle"] == str(tmp_path) and summary["adapted_layers"] == 14
    assert summary["ratio_to_full_moe"] > 1
    info = json.loads(cli("inspect", "-f", "json").out)
    assert info["head"] == "v0001" and info["adapted_layers"] == 14 and info["problems"] == []
    assert info["trainable_parameters"] == summary["trainable_params"]
    typed = f"medqwen init-experts --base tiny-qwen2-vl --recipe {TINY} -f json"
    assert json.loads(cli("log", "-f", "json").out)[0]["command"] == typed  # as typed, not sys.argv
    stored = json.loads((tmp_path / "bundle.json").read_text())["recipe"]
    assert stored["tasks"]["ct"]["datasets"][0]["path"] == "builtin:ct"
    again = cli("init-experts", "--base", "tiny-qwen2-vl")
    assert again.code == 1 and "never overwrites" in again.err


def test_shortcut_flags_and_partial_skip(cli, tmp_path: Path) -> None:
    result = cli(
        "init-experts",
        "--base",
        "tiny-qwen2.5-vl",
        "--out",
        tmp_path / "b",
        "--method",
        "moelora",
        "--experts",
        "4",
        "--top-k",
        "1",
        "--rank",
        "48",
        "-f",
        "json",
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert (summary["method"], summary["experts"], summary["top_k"], summary["rank"]) == (
        "moelora",
        4,
        1,
        48,
    )
    # k_proj / v_proj are 32 x 64 in the tiny presets: smaller than rank 48, skipped and reported
    assert summary["adapted_layers"] == 10 and len(summary["skipped"]) == 4
    assert all("< rank 48" in reason for reason in summary["skipped"].values())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--method", "sparse"], "adapter.method"),
        (["--experts", "4", "--top-k", "5"], "top_k (5) must be <= experts (4)"),
        (["--experts", "4", "--rank", "18"], "divisible"),
        (["--experts", "2", "--rank", "128"], "smaller than rank 128"),
        (["--set", 'adapter.targets=["no_such_proj$"]'], "no linear layer matches"),
    ],
)
def test_bad_adapter_settings(cli, tmp_path: Path, args: list[str], needle: str) -> None:
    result = cli("init-experts", "--base", "tiny-qwen2-vl", "--out", tmp_path / "b", *args)
    assert result.code == 1 and needle in result.err and "Hint:" in result.err
    assert not (tmp_path / "b" / "bundle.json").exists()


def test_out_must_be_new_or_empty(cli, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = cli("init-experts", "--base", "tiny-qwen2-vl", "--out", tmp_path / "mine")
    assert result.code == 1 and f"Error: --out {tmp_path / 'mine'} " in result.err
    assert "Hint: choose an empty or new directory" in result.err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]  # untouched
    (tmp_path / "file").write_text("x")
    assert "not a directory" in cli("init-experts", "--base", "tiny-qwen2-vl", "--out",
                                    tmp_path / "file").err  # fmt: skip
    (tmp_path / "empty").mkdir()
    ok = cli("init-experts", "--base", "tiny-qwen2-vl", "--out", tmp_path / "empty", "-f", "json")
    assert ok.code == 0, ok.err
    again = cli("init-experts", "--base", "tiny-qwen2-vl", "--out", tmp_path / "empty")
    assert again.code == 1 and "never overwrites" in again.err  # a bundle is refused as before


def test_base_not_found(cli, tmp_path: Path) -> None:
    result = cli("init-experts", "--base", "Qwen2.5-VL", "--out", tmp_path / "b")
    assert result.code == 1
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in result.err and "huggingface-cli download" in result.err


def test_no_base_no_recipe(cli, tmp_path: Path) -> None:
    result = cli("init-experts", "--out", tmp_path / "b")
    assert result.code == 1 and "no base model given" in result.err


def test_bad_device_is_a_usage_error(cli, tmp_path: Path) -> None:
    assert (
        cli(
            "init-experts", "--base", "tiny-qwen2-vl", "--out", tmp_path / "b", "--device", "tpu"
        ).code
        == 2
    )

"""The CLI frame: help, version, exit codes, Error/Hint, debug tracebacks, validate/inspect/log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medqwen_cli.bundle import Bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    b = Bundle.create(
        tmp_path / "cxr",
        base={"model_id": "tiny-qwen2-vl", "fingerprint": "f00", "source": "preset"},
        recipe={
            "adapter": {
                "method": "sslora",
                "experts": 4,
                "top_k": 2,
                "rank": 8,
                "scaling": "theory",
            }
        },
        init_tensors={"language_model.layers.0.mlp.up_proj.init_A": torch.zeros(8, 64)},
    )
    for i, task in enumerate(["xray", "ct"]):
        b.append_version(
            {
                "language_model.layers.0.mlp.up_proj.lora_A": torch.full((8, 64), float(i)),
                "language_model.layers.0.mlp.up_proj.lora_B": torch.zeros(128, 8),
            },
            command=f"medqwen continue --task {task}",
            tasks=[task],
            recipe={},
        )
    return b


def test_help_lists_only_real_commands(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for name in ("validate", "inspect", "log"):
        assert name in result.out


def test_version(cli) -> None:
    from medqwen_cli import __version__

    assert cli("--version").out.strip() == f"medqwen {__version__}"


def test_help_does_not_import_torch() -> None:
    code = "import sys; from medqwen_cli.cli.app import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_usage_error_exits_2(cli) -> None:
    result = cli("log", "--format", "yaml")
    assert result.code == 2
    assert cli("frobnicate").code == 2


def test_validate_ok_and_json(cli) -> None:
    result = cli("validate", REPO / "recipes/debug/tiny.yaml", "--format", "json")
    assert result.code == 0 and json.loads(result.out)["valid"] is True


def test_validate_reports_every_problem(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  bse: x\ntrain:\n  lr: fast\n")
    result = cli("validate", bad, "--format", "table")
    assert result.code == 1
    assert "did you mean 'base'" in result.err and "train.lr" in result.err
    assert result.err.count("Error:") == 1 and "Hint:" in result.err
    as_json = cli("validate", bad, "--format", "json")
    assert as_json.code == 1 and {p["field"] for p in json.loads(as_json.out)["problems"]} == {
        "model.bse",
        "train.lr",
    }


def test_validate_set_unknown_path(cli) -> None:
    result = cli("validate", REPO / "recipes/debug/tiny.yaml", "--set", "adapter.rnak=3")
    assert (
        result.code == 1
        and "Error: --set adapter.rnak" in result.err
        and "did you mean 'rank'" in result.err
    )


def test_inspect_and_log_json(cli, bundle: Bundle) -> None:
    info = json.loads(cli("inspect", bundle.root, "--format", "json").out)
    assert info["head"] == "v0002" and info["versions"] == 2 and info["problems"] == []
    assert info["trainable_parameters"] == 8 * 64 + 128 * 8 and info["tasks_seen"] == ["xray", "ct"]
    log = json.loads(cli("log", bundle.root, "--format", "json").out)
    assert [row["id"] for row in log] == ["v0002", "v0001"] and log[0]["head"] is True
    csv_out = cli("log", bundle.root, "--format", "csv").out.splitlines()
    assert csv_out[0] == "version,parent,tasks,created,command,acceptance"
    assert csv_out[1].startswith("v0002,v0001,ct,")


def test_commands_find_the_bundle_from_a_subdirectory(cli, bundle: Bundle, monkeypatch) -> None:
    sub = bundle.root / "reports"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert json.loads(cli("log", "-f", "json").out)[0]["id"] == "v0002"
    monkeypatch.chdir(bundle.root.parent)
    result = cli("log")
    assert (
        result.code == 1 and "Error: no bundle in" in result.err and "MEDQWEN_BUNDLE" in result.err
    )


def test_not_a_bundle(cli, tmp_path: Path) -> None:
    result = cli("inspect", tmp_path)
    assert result.code == 1 and "not a medqwen bundle" in result.err


def test_inspect_reports_corruption(cli, bundle: Bundle) -> None:
    (bundle.root / "versions/v0001/adapter.safetensors").write_bytes(b"garbage")
    info = json.loads(cli("inspect", bundle.root, "-f", "json").out)
    assert any("checksum mismatch" in p for p in info["problems"])


def test_debug_shows_a_traceback_without_locals(tmp_path: Path) -> None:
    env = {**os.environ, "MEDQWEN_DEBUG": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "medqwen_cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 1 and "Traceback" in out.stderr and "Error: " in out.stderr
    env.pop("MEDQWEN_DEBUG")
    out = subprocess.run(
        [sys.executable, "-m", "medqwen_cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert "Traceback" not in out.stderr and out.stderr.startswith("Error: ")

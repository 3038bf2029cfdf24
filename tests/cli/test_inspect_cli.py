"""`medqwen inspect`'s exit code, and every command refusing a bundle whose lineage is damaged.

A damaged file is one that is missing or fails the sha256 recorded for it. `inspect` prints its
report and exits 1 naming the files; a command that would use an affected version (evaluate,
train, continue, merge) exits 1 naming them before any work, and leaves the bundle as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--set", "train.max_steps=1", "--set", "train.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with v0001 (init) and v0002 (one step on xray)."""
    from medqwen_cli.init_experts import init_experts
    from medqwen_cli.recipe import load_recipe
    from medqwen_cli.training.run import train_bundle

    root = tmp_path_factory.mktemp("inspect-cli") / "b"
    init_experts(load_recipe(REPO / "recipes/debug/tiny.yaml", ["eval.max_samples=2"]), root)
    train_bundle(root, tasks=["xray"], overrides=QUICK[1::2])
    return root


@pytest.fixture
def bundle(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "b")
    return tmp_path / "b"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): what "nothing was written" compares."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_sound_bundle_inspects_with_exit_0(cli, bundle: Path) -> None:
    (bundle / "versions/.tmp-v0003-x").mkdir()  # left by a crash: listed, harmless
    result = cli("inspect", bundle, "-f", "json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["damaged"] == {} and info["head"] == "v0002"
    assert info["problems"] == [
        "unpublished directory versions/.tmp-v0003-x (left by an interrupted write; ignored)"
    ]


def test_inspect_prints_its_report_then_exits_1_naming_the_damaged_files(cli, bundle: Path) -> None:
    (bundle / "versions/v0001/version.json").unlink()
    metrics = bundle / "versions/v0002/metrics.json"
    metrics.write_text(metrics.read_text() + " ")
    result = cli("inspect", bundle, "-f", "json")
    assert result.code == 1
    info = json.loads(result.out)  # the report is printed in full before the error
    assert info["damaged"] == {
        "versions/v0001/version.json": "missing",
        "versions/v0002/metrics.json": "checksum mismatch (the file changed after it was written)",
    }
    assert info["trainable_parameters"] > 0
    error = result.err.splitlines()[-2]
    assert error.startswith("Error: integrity check failed: 2 damaged file(s)")
    assert "versions/v0001/version.json" in error and "versions/v0002/metrics.json" in error
    table = cli("inspect", bundle, "-f", "table")
    assert table.code == 1 and "versions/v0001/version.json: missing" in table.out


def test_inspect_survives_a_missing_head_adapter(cli, bundle: Path) -> None:
    (bundle / "versions/v0002/adapter.safetensors").unlink()
    result = cli("inspect", bundle, "-f", "json")
    assert result.code == 1 and "versions/v0002/adapter.safetensors" in result.err
    assert json.loads(result.out)["trainable_parameters"] is None


@pytest.mark.parametrize(
    "damage",
    ["versions/v0001/version.json", "versions/v0001/adapter.safetensors", "init.safetensors"],
)
def test_every_command_refuses_a_damaged_lineage_before_any_write(
    cli, bundle: Path, tmp_path: Path, damage: str
) -> None:
    """v0001 is the head's parent: its files are part of v0002's lineage."""
    (bundle / damage).unlink()
    before = snapshot(bundle)
    out = tmp_path / "export"
    runs = {
        "evaluate": cli("evaluate", bundle),
        "continue": cli("continue", bundle, "--task", "ct", *QUICK),
        "train": cli("train", bundle, "--task", "xray", "--restart", *QUICK),
        "merge": cli("merge", bundle, "--out", out, "--no-eval"),
    }
    for command, result in runs.items():
        assert result.code == 1, (command, result.err)
        error = [line for line in result.err.splitlines() if line.startswith("Error:")]
        assert error and "cannot use v0002" in error[0] and f"{damage}: missing" in error[0], (
            command,
            result.err,
        )
    assert snapshot(bundle) == before  # nothing deleted, rewritten or added
    assert not out.exists()


def test_ctrl_c_outside_training_says_interrupted(cli, bundle: Path, monkeypatch) -> None:
    from medqwen_cli import bundle as bundle_mod

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_mod, "summarize", ctrl_c)
    result = cli("inspect", bundle)
    assert result.code == 130 and result.err == "Error: interrupted\n"

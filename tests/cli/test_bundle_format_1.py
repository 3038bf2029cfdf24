"""A bundle written by medqwen 0.1.0 (format 1, tests/fixtures/bundle-format-1: the tiny preset,
sslora E=2 k=1 r=4, v0001 only) is read, trained and grown by this medqwen, and stays format 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle-format-1"
QUICK = ["--set", "train.max_steps=2", "--set", "train.checkpoint_every=1000"]


def test_a_format_1_bundle_grows_and_stays_format_1(cli, tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    before = json.loads((root / "bundle.json").read_text())
    assert before["format_version"] == 1 and before["method"] == before["recipe"]["adapter"]

    shown = cli("inspect", root, "-f", "json")
    assert shown.code == 0, shown.err
    summary = json.loads(shown.out)
    assert summary["format_version"] == 1 and summary["method"] == before["method"]
    assert summary["problems"] == []

    trained = cli("train", root, "--task", "builtin:xray", "--set", "adapter.dropout=0.1", *QUICK)
    assert trained.code == 0, trained.err
    after = json.loads((root / "bundle.json").read_text())
    assert after["format_version"] == 1 and list(after) == list(before)  # the same keys, in order
    assert after["method"] == after["recipe"]["adapter"] == before["method"]  # fixed at init
    assert [v["id"] for v in after["versions"]] == ["v0001", "v0002"]
    assert after["versions"][0] == before["versions"][0]
    info = json.loads((root / "versions" / "v0002" / "version.json").read_text())
    assert info["recipe"]["adapter"]["dropout"] == 0.1  # a training field, recorded per version

    changed = cli("train", root, "--task", "builtin:xray", "--set", "adapter.rank=8", *QUICK)
    assert changed.code == 1 and "(bundle: rank=4)" in changed.err  # fixed at init: refused
    assert json.loads((root / "bundle.json").read_text()) == after

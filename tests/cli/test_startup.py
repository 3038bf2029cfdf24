"""A command that fails on its arguments, bundle or base never imports the heavy stack.

`evaluate` (the HF metrics package) imports transformers' pipelines (~7 s), transformers and
torch seconds more: a typo must be reported before any of them loads. Checked on the modules
imported, in a fresh interpreter, never on wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
from medqwen_cli.cli.app import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

HEAVY = ("evaluate", "transformers", "datasets")


def _run(*args: str) -> tuple[int, set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    last = proc.stdout.strip().splitlines()[-1]
    out = json.loads(last)
    return out["code"], set(out["modules"]), proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "no_torch"),
    [
        (["evaluate", "{tmp}/missing", "--task", "x"], 1, True),
        (["evaluate", "--no-such-flag"], 2, True),
        (["evaluate", "{tmp}/missing", "--set", "eval.nope=1"], 1, True),
        (["init-experts", "--base", "no-such-base", "--out", "{tmp}/b"], 1, True),
        (["init-experts", "--base", "tiny-qwen2-vl", "--out", "{tmp}/full"], 1, True),
        (["validate", "{tmp}/missing.yaml"], 1, True),
        (["train", "--bad-flag"], 2, True),
        (["train", "{tmp}/missing"], 1, True),
        (["continue", "{tmp}/missing", "--task", "x"], 1, True),
        (["merge", "{tmp}/missing", "--out", "{tmp}/export"], 1, True),
    ],
)
def test_errors_before_heavy_imports(
    tmp_path: Path, args: list[str], code: int, no_torch: bool
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not a bundle")
    got, modules, err = _run(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert got == code, err
    loaded = [m for m in HEAVY + ("torch",) * no_torch if m in modules]
    assert not loaded, f"medqwen {' '.join(args)} imported {loaded} before failing"


@pytest.mark.parametrize(
    "args",
    [
        ["continue", "{b}", "--task", "no-such-task"],
        ["train", "{b}", "--task", "no-such-task"],
        ["continue", "{b}", "--task", "builtin:cxr-rules", "--set", "train.nope=1"],
        ["merge", "{b}", "--version", "v9", "--out", "{b}/../export"],
        ["evaluate", "{b}", "--version", "v9"],
    ],
)
def test_bad_task_or_version_of_a_real_bundle_before_torch(
    tmp_path: Path, cli, args: list[str]
) -> None:
    bundle = tmp_path / "b"
    assert cli("init-experts", "--base", "tiny-qwen2-vl", "--out", bundle).code == 0
    before = sorted(p.name for p in bundle.rglob("*"))
    got, modules, err = _run(*(a.replace("{b}", str(bundle)) for a in args))
    assert got == 1, err
    assert err.startswith("Error:"), err
    loaded = [m for m in HEAVY + ("torch",) if m in modules]
    assert not loaded, f"medqwen {' '.join(args)} imported {loaded} before failing"
    assert sorted(p.name for p in bundle.rglob("*")) == before  # nothing written

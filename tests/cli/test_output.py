"""Output as users meet it: options where they type them, tables readable in a log file."""

from __future__ import annotations

import logging
from pathlib import Path

from medqwen_cli.cli import _output
from medqwen_cli.cli.app import hoist_quiet

TINY = Path(__file__).resolve().parents[2] / "recipes/debug/tiny.yaml"


def test_quiet_after_the_command_is_moved_in_front_of_it() -> None:
    assert hoist_quiet(["train", "b", "-q"]) == ["--quiet", "train", "b"]
    assert hoist_quiet(["train", "b", "--quiet", "--task", "x"]) == [
        "--quiet",
        "train",
        "b",
        "--task",
        "x",
    ]
    assert hoist_quiet(["-q", "train", "b"]) == ["-q", "train", "b"]  # already in front
    # in predict -q is --question: only --quiet moves
    assert hoist_quiet(["predict", "b", "-q", "Is there?"]) == ["predict", "b", "-q", "Is there?"]
    assert hoist_quiet(["predict", "b", "--quiet"]) == ["--quiet", "predict", "b"]
    assert hoist_quiet(["validate", "r", "--", "-q"]) == ["validate", "r", "--", "-q"]
    assert hoist_quiet(["--version"]) == ["--version"]


def test_quiet_after_a_command_quiets_it(cli) -> None:
    done = cli("validate", str(TINY), "--no-data", "-q")
    assert done.code == 0, done.err
    assert not logging.getLogger().isEnabledFor(logging.INFO)
    done = cli("validate", str(TINY), "--no-data")
    assert logging.getLogger().isEnabledFor(logging.INFO)


def test_tables_keep_their_natural_width_outside_a_terminal(capsys) -> None:
    columns = ["figure", "headline_mean relative drop", "forgetting (Chaudhry)", "definition"]
    rows = [{c: f"{c} value of a long cell, never cut" for c in columns}]
    _output.emit("table", _output.Rows(rows, columns, title="a title"))
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) > 80
    assert all(f"{c} value of a long cell, never cut" in out for c in columns)

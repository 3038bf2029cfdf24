"""The forgetting plot's colour scale follows the data, so close scores stay distinguishable, and
loading matplotlib says nothing on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medqwen_cli.plots import colour_range


def test_colour_range_spans_the_data_not_zero_to_one() -> None:
    assert colour_range([0.13, 0.32, 0.2]) == (0.13, 0.32)  # the quick demo's spread
    assert colour_range([0.5, 0.5]) == pytest.approx((0.45, 0.55))  # one value: a band around it
    assert colour_range([]) == (0.0, 1.0)


def test_matplotlib_with_a_fresh_font_cache_logs_nothing(tmp_path: Path) -> None:
    """The quick demo printed matplotlib's "generated new fontManager" (INFO, under the CLI's
    logging) on a machine whose font cache was not built yet."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
        "from medqwen_cli.plots import _matplotlib; _matplotlib()"
    )
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path)}  # an empty cache: built on import
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert any(tmp_path.glob("fontlist-*.json"))  # the cache was built in this run

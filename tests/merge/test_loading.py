"""load_merged refuses what is not an export, and `import medqwen_cli` stays free of torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medqwen_cli.merge import MergeError, load_merged

REPO = Path(__file__).resolve().parents[2]


def test_load_merged_errors_and_light_import(tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="not a medqwen export"):
        load_merged(tmp_path)
    code = (
        "import sys, medqwen_cli; assert 'torch' not in sys.modules; "
        "f = medqwen_cli.load_merged; assert callable(f) and 'torch' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)

"""The code passes the project's linter (`[tool.ruff]` in pyproject.toml), so that `make test`
and CI catch an unused import or an unsorted block, not a reviewer."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    # The environment's own ruff, the pinned one: another on PATH may check other rules.
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed beside this Python (make setup installs it with the dev extra)")
    done = subprocess.run([ruff, "check", "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

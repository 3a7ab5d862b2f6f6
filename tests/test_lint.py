"""The lint session's checks (ruff, mypy) run with the tests, so CI fails on a lint error too."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "encdec", "tools", "tests",
                          "benchmarks", "noxfile.py"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow  # a subprocess over the checked packages (~20 s cold)
def test_mypy_clean():
    """pyproject's [tool.mypy]: encdec/core, the CLIs and encdec/convert type-check."""
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]

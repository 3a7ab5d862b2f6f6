"""The lint session's check runs with the tests, so CI fails on a lint error too."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "encdec", "tools", "tests",
                          "benchmarks", "noxfile.py"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

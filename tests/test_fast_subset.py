"""The fast subset's table stays true: every `SLOW_CASES` pattern still names a test."""

from __future__ import annotations

import fnmatch
import subprocess
import sys

import pytest

from tests.conftest import SLOW_CASES


@pytest.mark.slow
def test_every_slow_case_pattern_matches_a_test():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n",
                          "0", "--collect-only", "tests"], capture_output=True, text=True,
                         timeout=600).stdout
    ids = [line.partition("::") for line in out.splitlines() if "::" in line]
    stale = [f"{path}: {pattern}" for path, patterns in SLOW_CASES.items()
             for pattern in patterns
             if not any(p == path and fnmatch.fnmatchcase(name, pattern) for p, _, name in ids)]
    assert len(ids) > 1000, out[-2000:]
    assert not stale, "SLOW_CASES patterns that match no test:\n" + "\n".join(stale)

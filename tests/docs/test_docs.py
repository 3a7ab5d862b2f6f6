"""Every ```python block in docs/ runs: the blocks of one page in order, in one process.

(A block fenced ```py is shown to readers but not run: it needs software the tests do not
install, such as transformers 4.x; each such block says so.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each page's examples run in a subprocess

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_examples_run(page, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    script = tmp_path / f"{page.stem}.py"
    script.write_text("\n\n".join(blocks))
    # XLA's optimisation level and thread counts: tests/conftest.py's `cpu_settings`, inherited
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": "tensorflow", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(DOCS.parent)}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)  # loaded CI machines
    assert run.returncode == 0, f"{page.name}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"

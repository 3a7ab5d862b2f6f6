"""`import encdec.flax` imports neither torch nor tensorflow (checked in a fresh interpreter,
with both blocked so that even a guarded import attempt shows up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tensorflow", "keras"):
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, Block())
import encdec.flax
from encdec.flax import EncoderDecoderModel, FlaxEncoderDecoderModel
assert FlaxEncoderDecoderModel is EncoderDecoderModel
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "keras"))
assert not bad, bad
print("ok")
"""


def test_import_encdec_flax_imports_no_other_framework():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

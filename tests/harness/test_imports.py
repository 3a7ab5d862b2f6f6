"""`import encdec.<backend>` (and every module under it) imports no other framework and not
transformers: checked in a fresh interpreter with them blocked, so that even a guarded import
attempt fails. (encdec.core without any framework: tests/core/test_no_framework_imports.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = {"pt": ("torch",), "tf": ("tensorflow", "keras", "tf_keras"),
              "flax": ("jax", "jaxlib", "flax", "optax")}
ALIASES = {"pt": None, "tf": "TFEncoderDecoderModel", "flax": "FlaxEncoderDecoderModel"}

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    backend, blocked, alias = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3]

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"import of {name!r} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    module = importlib.import_module(f"encdec.{backend}")
    for info in pkgutil.walk_packages(module.__path__, f"encdec.{backend}."):
        importlib.import_module(info.name)
    if alias != "-":
        assert getattr(module, alias) is module.EncoderDecoderModel, alias
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
    assert not leaked, leaked
    print("ok")
    """
)


def run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -c code args...` in a fresh interpreter at the repository root."""
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
               "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=300)


# tf's fresh interpreter is the slowest (importing TensorFlow): CI
@pytest.mark.parametrize("name", ["pt", pytest.param("tf", marks=pytest.mark.slow), "flax"])
def test_import_needs_no_other_framework(name):
    blocked = [f for b, names in FRAMEWORKS.items() if b != name for f in names]
    r = run(SCRIPT, name, ",".join([*blocked, "transformers"]), ALIASES[name] or "-")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]

"""`import encdec.tf` imports neither torch nor jax, and refuses a non-TensorFlow Keras backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "jax", "jaxlib", "flax", "transformers"):
                raise ImportError(f"import of {name!r} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import encdec.tf
    import encdec.tf.layers, encdec.tf.bert, encdec.tf.gpt2, encdec.tf.encoder_decoder
    import encdec.tf.params
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "flax"))
    assert not leaked, leaked
    print("ok")
    """
)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=300)


def test_import_needs_neither_torch_nor_jax():
    r = _run(_SCRIPT, KERAS_BACKEND="tensorflow")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_non_tensorflow_keras_backend_is_a_clear_error():
    r = _run("import encdec.tf", KERAS_BACKEND="numpy")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "KERAS_BACKEND=tensorflow" in r.stderr, r.stderr[-2000:]

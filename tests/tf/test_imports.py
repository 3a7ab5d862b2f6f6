"""`import encdec.tf` refuses a non-TensorFlow Keras backend with a clear error. (Importing no
other framework, in every backend: tests/harness/test_imports.py.)"""

from __future__ import annotations

import pytest

from tests.harness.test_imports import run


@pytest.mark.slow  # CI: a fresh interpreter importing TensorFlow
def test_non_tensorflow_keras_backend_is_a_clear_error():
    r = run("import encdec.tf", KERAS_BACKEND="numpy")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "KERAS_BACKEND=tensorflow" in r.stderr, r.stderr[-2000:]

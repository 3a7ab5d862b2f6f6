"""encdec's TensorFlow backend: Keras 3 models (TensorFlow backend only) numerically identical
to transformers' PyTorch ones."""

import contextlib as _contextlib
import os as _os
import sys as _sys


@_contextlib.contextmanager
def _quiet_import():
    """TensorFlow's C++ logging writes to file descriptor 2 at import whatever
    TF_CPP_MIN_LOG_LEVEL says (oneDNN and absl notices): keep that framework noise away from
    users while it is first imported. Python errors still propagate."""
    if "tensorflow" in _sys.modules:
        yield
        return
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _sys.stderr.flush()
    saved, devnull = _os.dup(2), _os.open(_os.devnull, _os.O_WRONLY)
    try:
        _os.dup2(devnull, 2)
        yield
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
        _os.close(devnull)


with _quiet_import():
    import keras as _keras
    import tensorflow as _tf  # noqa: F401

if _keras.config.backend() != "tensorflow":
    raise ImportError(
        f"encdec.tf needs Keras' TensorFlow backend, but Keras is configured for "
        f"{_keras.config.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras "
        "(or use encdec.pt / encdec.flax).")

from encdec.core.registry import public_classes  # noqa: E402

from .encoder_decoder import (  # noqa: E402
    FAMILIES,
    EncoderDecoderModel,
    TFEncoderDecoderModel,  # noqa: F401 - the reference's TF class name
)

_CLASSES = public_classes(FAMILIES, __name__)
globals().update(_CLASSES)

__all__ = sorted([*_CLASSES, EncoderDecoderModel.__name__, "TFEncoderDecoderModel"])

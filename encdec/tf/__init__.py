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

from encdec.core.registry import ARCHITECTURES as _ARCHITECTURES  # noqa: E402

from .encoder_decoder import (  # noqa: E402
    FAMILIES,
    EncoderDecoderModel,
    TFEncoderDecoderModel,  # noqa: F401 - the reference's TF class name
)


def _public_classes() -> dict[str, type]:
    """The reference's class names of every registered architecture: its family's class, or
    (another model type of the family) a subclass whose `config_class` is the architecture's,
    so that its `from_pretrained` refuses a checkpoint of another model type."""
    out: dict[str, type] = {}
    for arch in _ARCHITECTURES:
        for name, cls in zip((arch.base_class, arch.lm_class), FAMILIES[arch.family],
                             strict=True):
            if name is None:
                continue
            out[name] = cls if cls.__name__ == name else type(
                name, (cls,), {"config_class": arch.config_class, "__module__": __name__,
                               "__doc__": f"{arch.doc}: encdec's `{cls.__name__}` for "
                                          f"{arch.name} checkpoints."})
    return out


_CLASSES = _public_classes()
globals().update(_CLASSES)

__all__ = sorted([*_CLASSES, EncoderDecoderModel.__name__, "TFEncoderDecoderModel"])

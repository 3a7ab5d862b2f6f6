"""encdec's TensorFlow backend: Keras 3 models (TensorFlow backend only) numerically identical
to transformers' PyTorch ones.

`EncoderDecoderModel` (alias `TFEncoderDecoderModel`, the reference's TF name) is the composite;
the backbones follow under the reference's class names (`BertModel`, `RobertaModel`,
`GPT2LMHeadModel`, `MBartForCausalLM`, ...), each defined in `classes.py`, which
tools/gen_classes.py writes from `encdec.core.registry.ARCHITECTURES` (it keeps the import of
them below and `__all__` in step too).
"""

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

from .classes import (  # noqa: E402
    BartForCausalLM,
    BertGenerationDecoder,
    BertGenerationEncoder,
    BertLMHeadModel,
    BertModel,
    CamembertForCausalLM,
    CamembertModel,
    Data2VecTextForCausalLM,
    Data2VecTextModel,
    DistilBertModel,
    ElectraForCausalLM,
    ElectraModel,
    GPT2LMHeadModel,
    GPT2Model,
    MarianForCausalLM,
    MBartForCausalLM,
    PegasusForCausalLM,
    RobertaForCausalLM,
    RobertaModel,
    XLMRobertaForCausalLM,
    XLMRobertaModel,
)
from .encoder_decoder import (  # noqa: E402
    EncoderDecoderModel,
    TFEncoderDecoderModel,  # the reference's TF class name
)

__all__ = [
    "EncoderDecoderModel", "TFEncoderDecoderModel", "BertModel", "BertLMHeadModel", "RobertaModel",
    "RobertaForCausalLM", "XLMRobertaModel", "XLMRobertaForCausalLM", "CamembertModel",
    "CamembertForCausalLM", "Data2VecTextModel", "Data2VecTextForCausalLM", "ElectraModel",
    "ElectraForCausalLM", "BertGenerationEncoder", "BertGenerationDecoder", "DistilBertModel",
    "GPT2Model", "GPT2LMHeadModel", "BartForCausalLM", "MBartForCausalLM", "MarianForCausalLM",
    "PegasusForCausalLM",
]

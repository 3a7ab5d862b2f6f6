"""encdec's TensorFlow backend: Keras 3 models (TensorFlow backend only) numerically identical
to transformers' PyTorch ones."""

import keras as _keras

if _keras.config.backend() != "tensorflow":
    raise ImportError(
        f"encdec.tf needs Keras' TensorFlow backend, but Keras is configured for "
        f"{_keras.config.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras "
        "(or use encdec.pt / encdec.flax).")

from .bert import BertLMHeadModel, BertModel  # noqa: E402
from .encoder_decoder import EncoderDecoderModel, TFEncoderDecoderModel  # noqa: E402
from .gpt2 import GPT2LMHeadModel, GPT2Model  # noqa: E402

__all__ = ["BertLMHeadModel", "BertModel", "EncoderDecoderModel", "GPT2LMHeadModel", "GPT2Model",
           "TFEncoderDecoderModel"]

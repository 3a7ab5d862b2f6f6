"""encdec's framework-free core: configs, the weight-name table, checkpoint I/O, seq2seq rules."""

from .checkpoint import CheckpointError
from .config import (
    BertConfig,
    ConfigError,
    EncoderDecoderConfig,
    GenerationConfig,
    GPT2Config,
    ModelConfig,
)

__all__ = ["BertConfig", "CheckpointError", "ConfigError", "EncoderDecoderConfig",
           "GenerationConfig", "GPT2Config", "ModelConfig"]

"""encdec's framework-free core: configs, the weight-name table, checkpoint I/O, seq2seq rules."""

from .checkpoint import CheckpointError
from .config import (
    BartConfig,
    BertConfig,
    BertGenerationConfig,
    CamembertConfig,
    ConfigError,
    DistilBertConfig,
    ElectraConfig,
    EncoderDecoderConfig,
    GenerationConfig,
    GPT2Config,
    MarianConfig,
    MBartConfig,
    ModelConfig,
    PegasusConfig,
    RobertaConfig,
    XLMRobertaConfig,
)
from .registry import ARCHITECTURES, Architecture, architecture

__all__ = ["ARCHITECTURES", "Architecture", "BartConfig", "BertConfig", "BertGenerationConfig",
           "CamembertConfig", "CheckpointError", "ConfigError", "DistilBertConfig",
           "ElectraConfig", "EncoderDecoderConfig", "GenerationConfig", "GPT2Config",
           "MarianConfig", "MBartConfig", "ModelConfig", "PegasusConfig", "RobertaConfig",
           "XLMRobertaConfig", "architecture"]

"""encdec's framework-free core: configs, the weight-name table, checkpoint I/O, seq2seq rules.

The modules form layers, lowest first; each imports only modules of the layers below it, never
one inside a function (tests/core/test_import_graph.py reads this list and checks it):

    checkpoint, outputs, tokenizer_files  files, output containers, tokenizers (no encdec import)
    config                config classes; model_type -> config class (`CONFIG_CLASSES`)
    weights               the weight-table mechanism: Param, Role, Table, matching, load/export
    registry              every architecture, its weight tables and lookups (positions, init)
    seq2seq               the composite's rules (labels, start id, keyword routing)
    validation            input checks at the API boundary (`check_positions` included)
    generation            the generation plan, processors and beam search as a numpy spec
    modeling              loading and saving shared by every backend (its `Backend` hooks)
    warm_start            `from_encoder_decoder_pretrained`, written once for every backend
"""

from .checkpoint import CheckpointError
from .config import (
    BartConfig,
    BertConfig,
    BertGenerationConfig,
    CamembertConfig,
    ConfigError,
    Data2VecTextConfig,
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
           "CamembertConfig", "CheckpointError", "ConfigError", "Data2VecTextConfig",
           "DistilBertConfig", "ElectraConfig", "EncoderDecoderConfig", "GenerationConfig",
           "GPT2Config", "MarianConfig", "MBartConfig", "ModelConfig", "PegasusConfig",
           "RobertaConfig", "XLMRobertaConfig", "architecture"]

"""The reference's class name of every architecture, for encdec.pt (`RobertaModel`,
`ElectraForCausalLM`, `MBartForCausalLM`, ...): a family's own class where the names agree, else
a subclass whose only change is `config_class`, so that its `from_pretrained` refuses a
checkpoint of another model type.

Generated from `encdec.core.registry.ARCHITECTURES` by tools/gen_classes.py: do not edit; run
`python tools/gen_classes.py` after changing the registry.
"""

from encdec.core.config import (
    BertGenerationConfig,
    CamembertConfig,
    Data2VecTextConfig,
    ElectraConfig,
    MarianConfig,
    MBartConfig,
    PegasusConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from .bart import BartForCausalLM
from .bert import BertLMHeadModel, BertModel
from .distilbert import DistilBertModel
from .gpt2 import GPT2LMHeadModel, GPT2Model


class RobertaModel(BertModel):
    """transformers' `RobertaModel`: encdec's `BertModel` with `RobertaConfig`."""

    config_class = RobertaConfig


class RobertaForCausalLM(BertLMHeadModel):
    """transformers' `RobertaForCausalLM`: encdec's `BertLMHeadModel` with `RobertaConfig`."""

    config_class = RobertaConfig


class XLMRobertaModel(BertModel):
    """transformers' `XLMRobertaModel`: encdec's `BertModel` with `XLMRobertaConfig`."""

    config_class = XLMRobertaConfig


class XLMRobertaForCausalLM(BertLMHeadModel):
    """transformers' `XLMRobertaForCausalLM`: encdec's `BertLMHeadModel` with `XLMRobertaConfig`."""

    config_class = XLMRobertaConfig


class CamembertModel(BertModel):
    """transformers' `CamembertModel`: encdec's `BertModel` with `CamembertConfig`."""

    config_class = CamembertConfig


class CamembertForCausalLM(BertLMHeadModel):
    """transformers' `CamembertForCausalLM`: encdec's `BertLMHeadModel` with `CamembertConfig`."""

    config_class = CamembertConfig


class Data2VecTextModel(BertModel):
    """transformers' `Data2VecTextModel`: encdec's `BertModel` with `Data2VecTextConfig`."""

    config_class = Data2VecTextConfig


class Data2VecTextForCausalLM(BertLMHeadModel):
    """transformers' `Data2VecTextForCausalLM`: encdec's `BertLMHeadModel` with
    `Data2VecTextConfig`."""

    config_class = Data2VecTextConfig


class ElectraModel(BertModel):
    """transformers' `ElectraModel`: encdec's `BertModel` with `ElectraConfig`."""

    config_class = ElectraConfig


class ElectraForCausalLM(BertLMHeadModel):
    """transformers' `ElectraForCausalLM`: encdec's `BertLMHeadModel` with `ElectraConfig`."""

    config_class = ElectraConfig


class BertGenerationEncoder(BertModel):
    """transformers' `BertGenerationEncoder`: encdec's `BertModel` with `BertGenerationConfig`."""

    config_class = BertGenerationConfig


class BertGenerationDecoder(BertLMHeadModel):
    """transformers' `BertGenerationDecoder`: encdec's `BertLMHeadModel` with
    `BertGenerationConfig`."""

    config_class = BertGenerationConfig


class MBartForCausalLM(BartForCausalLM):
    """transformers' `MBartForCausalLM`: encdec's `BartForCausalLM` with `MBartConfig`."""

    config_class = MBartConfig


class MarianForCausalLM(BartForCausalLM):
    """transformers' `MarianForCausalLM`: encdec's `BartForCausalLM` with `MarianConfig`."""

    config_class = MarianConfig


class PegasusForCausalLM(BartForCausalLM):
    """transformers' `PegasusForCausalLM`: encdec's `BartForCausalLM` with `PegasusConfig`."""

    config_class = PegasusConfig


__all__ = [
    "BertModel", "BertLMHeadModel", "RobertaModel", "RobertaForCausalLM", "XLMRobertaModel",
    "XLMRobertaForCausalLM", "CamembertModel", "CamembertForCausalLM", "Data2VecTextModel",
    "Data2VecTextForCausalLM", "ElectraModel", "ElectraForCausalLM", "BertGenerationEncoder",
    "BertGenerationDecoder", "DistilBertModel", "GPT2Model", "GPT2LMHeadModel", "BartForCausalLM",
    "MBartForCausalLM", "MarianForCausalLM", "PegasusForCausalLM",
]

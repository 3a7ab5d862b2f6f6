"""encdec's PyTorch backend: `torch.nn.Module` models numerically identical to transformers'.

`EncoderDecoderModel` is the composite; the backbones follow under the reference's class names
(`BertModel`, `RobertaModel`, `GPT2LMHeadModel`, `MBartForCausalLM`, ...), each defined in
`classes.py`, which tools/gen_classes.py writes from `encdec.core.registry.ARCHITECTURES` (it
keeps the import of them below and `__all__` in step too).
"""

from .classes import (
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
from .encoder_decoder import EncoderDecoderModel

__all__ = [
    "EncoderDecoderModel", "BertModel", "BertLMHeadModel", "RobertaModel", "RobertaForCausalLM",
    "XLMRobertaModel", "XLMRobertaForCausalLM", "CamembertModel", "CamembertForCausalLM",
    "Data2VecTextModel", "Data2VecTextForCausalLM", "ElectraModel", "ElectraForCausalLM",
    "BertGenerationEncoder", "BertGenerationDecoder", "DistilBertModel", "GPT2Model",
    "GPT2LMHeadModel", "BartForCausalLM", "MBartForCausalLM", "MarianForCausalLM",
    "PegasusForCausalLM",
]

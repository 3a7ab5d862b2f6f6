"""encdec's PyTorch backend: `torch.nn.Module` models numerically identical to transformers'."""

from .bert import BertLMHeadModel, BertModel
from .encoder_decoder import EncoderDecoderModel
from .gpt2 import GPT2LMHeadModel, GPT2Model

__all__ = ["BertLMHeadModel", "BertModel", "EncoderDecoderModel", "GPT2LMHeadModel", "GPT2Model"]

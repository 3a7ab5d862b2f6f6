"""encdec's Flax NNX backend: `flax.nnx.Module` models numerically identical to transformers'.

`EncoderDecoderModel` (alias `FlaxEncoderDecoderModel`, the reference's Flax name) is the
composite; the backbones follow under the reference's class names (`BertModel`, `RobertaModel`,
`GPT2LMHeadModel`, `MBartForCausalLM`, ...), each defined in `classes.py`, which
tools/gen_classes.py writes from `encdec.core.registry.ARCHITECTURES` (it keeps the import of
them below and `__all__` in step too).

Importing it registers the core's `ModelOutput` classes as JAX pytrees (keys preserved), so
outputs pass through `jax.jit` / `nnx.jit` and the tree utilities. It imports neither torch nor
tensorflow.
"""

import jax

from encdec.core import outputs as _outputs


def _register(cls: type) -> None:
    def flatten_with_keys(out):
        return [(jax.tree_util.DictKey(k), v) for k, v in out.items()], tuple(out)

    def flatten(out):
        return list(out.values()), tuple(out)

    def unflatten(keys, values):
        return cls(zip(keys, values, strict=True))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


for _cls in (_outputs.BaseModelOutput, _outputs.CausalLMOutput, _outputs.Seq2SeqLMOutput,
             _outputs.GenerateOutput):
    _register(_cls)

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
    FlaxEncoderDecoderModel,  # the reference's Flax class name
)

__all__ = [
    "EncoderDecoderModel", "FlaxEncoderDecoderModel", "BertModel", "BertLMHeadModel",
    "RobertaModel", "RobertaForCausalLM", "XLMRobertaModel", "XLMRobertaForCausalLM",
    "CamembertModel", "CamembertForCausalLM", "Data2VecTextModel", "Data2VecTextForCausalLM",
    "ElectraModel", "ElectraForCausalLM", "BertGenerationEncoder", "BertGenerationDecoder",
    "DistilBertModel", "GPT2Model", "GPT2LMHeadModel", "BartForCausalLM", "MBartForCausalLM",
    "MarianForCausalLM", "PegasusForCausalLM",
]

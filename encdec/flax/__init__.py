"""encdec's Flax NNX backend: `flax.nnx.Module` models numerically identical to transformers'.

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

from .bert import BertLMHeadModel, BertModel  # noqa: E402
from .encoder_decoder import EncoderDecoderModel, FlaxEncoderDecoderModel  # noqa: E402
from .gpt2 import GPT2LMHeadModel, GPT2Model  # noqa: E402

__all__ = ["BertLMHeadModel", "BertModel", "EncoderDecoderModel", "FlaxEncoderDecoderModel",
           "GPT2LMHeadModel", "GPT2Model"]

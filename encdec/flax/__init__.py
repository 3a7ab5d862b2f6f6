"""encdec's Flax NNX backend: `flax.nnx.Module` models numerically identical to transformers'.

Every architecture of `encdec.core.registry.ARCHITECTURES` is exported under the reference's
class names (`RobertaModel`, `ElectraForCausalLM`, `BertGenerationDecoder`, …): its family's
class with `config_class` set to the architecture's, so that `from_pretrained` refuses a
checkpoint of another model type. Made in one loop; no per-architecture code.

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

from encdec.core.registry import public_classes  # noqa: E402

from .encoder_decoder import FAMILIES, EncoderDecoderModel, FlaxEncoderDecoderModel  # noqa: E402

_CLASSES = public_classes(FAMILIES, __name__)
globals().update(_CLASSES)

__all__ = ["EncoderDecoderModel", "FlaxEncoderDecoderModel", *sorted(_CLASSES)]

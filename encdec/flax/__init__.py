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

from encdec.core.registry import ARCHITECTURES  # noqa: E402

from .encoder_decoder import FAMILIES, EncoderDecoderModel, FlaxEncoderDecoderModel  # noqa: E402


def _reference_classes() -> dict[str, type]:
    classes = {}
    for arch in ARCHITECTURES:
        base, lm = FAMILIES[arch.family]
        for name, family_class in ((arch.base_class, base), (arch.lm_class, lm)):
            if name is None:
                continue
            if family_class.__name__ == name:  # the family's own class (BertModel, GPT2Model)
                classes[name] = family_class
            else:
                classes[name] = type(name, (family_class,), {
                    "config_class": arch.config_class, "__module__": __name__,
                    "__qualname__": name, "__doc__": f"transformers' `{name}` ({arch.doc})."})
    return classes


_CLASSES = _reference_classes()
globals().update(_CLASSES)

__all__ = ["EncoderDecoderModel", "FlaxEncoderDecoderModel", *sorted(_CLASSES)]

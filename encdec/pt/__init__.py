"""encdec's PyTorch backend: `torch.nn.Module` models numerically identical to transformers'.

Every architecture of `encdec.core.registry.ARCHITECTURES` is exported under the reference's
class names (`RobertaModel`, `ElectraForCausalLM`, `BertGenerationDecoder`, …): its family's
class with `config_class` set to the architecture's, so that `from_pretrained` refuses a
checkpoint of another model type. Made in one loop; no per-architecture code.
"""

from encdec.core.registry import ARCHITECTURES

from .encoder_decoder import FAMILIES, EncoderDecoderModel


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

__all__ = ["EncoderDecoderModel", *sorted(_CLASSES)]

"""encdec's PyTorch backend: `torch.nn.Module` models numerically identical to transformers'.

Every architecture of `encdec.core.registry.ARCHITECTURES` is exported under the reference's
class names (`RobertaModel`, `ElectraForCausalLM`, `BertGenerationDecoder`, …): its family's
class with `config_class` set to the architecture's, so that `from_pretrained` refuses a
checkpoint of another model type. Made in one loop; no per-architecture code.
"""

from encdec.core.registry import public_classes

from .encoder_decoder import FAMILIES, EncoderDecoderModel

_CLASSES = public_classes(FAMILIES, __name__)
globals().update(_CLASSES)

__all__ = ["EncoderDecoderModel", *sorted(_CLASSES)]

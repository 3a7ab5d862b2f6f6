"""The checkpoint converter (`encdec-convert`): reference PyTorch / TF / Flax composite
checkpoints to and from each other, through the core weight-name table, verified numerically."""

from .converter import ConvertError, Source, convert, open_source

__all__ = ["ConvertError", "Source", "convert", "open_source"]

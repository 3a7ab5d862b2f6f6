"""The reference's TF (`tf_model.h5`) and Flax (`flax_model.msgpack`) weight names, derived from
the core weight-name table.

Follows transformers 4.57's `TFEncoderDecoderModel` / `FlaxEncoderDecoderModel.save_pretrained`
(verified tensor by tensor in tests/fixtures/reference/*/MANIFEST.json; see
tools/fixtures/README.md). Each reference dialect is the core dialect its layers come from
(Keras / NNX leaf names and layouts) plus the few places where the reference departs from it,
written down as data:

- TF: GPT-2's `TFConv1D` keeps `weight` (in, out) and a `(1, n)` bias; BERT's word-embedding
  table is `weight`, not `embeddings`; the encoder's base model sits under its main-layer name
  (`bert`, `transformer`); the BERT LM head is `mlm___cls`; list items are `layer_._0`, `h_._0`.
  Every dataset lives at `<side>/<scope>/<side>/<path>:0` (`<side>` = encoder, decoder,
  enc_to_dec_proj; `<scope>` = the model's Keras name, which the reference's loader ignores).
- Flax: GPT-2's Conv1D kernel is stored (out, in), i.e. transposed; paths are the canonical
  module paths joined with `/`.

The reverse mapping (file key -> canonical name) is computed from the forward one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from encdec.core.checkpoint import CheckpointError
from encdec.core.config import EncoderDecoderConfig
from encdec.core.weights import Dialect, Role, encoder_decoder_table, leaf_rule


class Layout(Enum):
    """How a stored tensor relates to the canonical (PyTorch) tensor."""

    SAME = "same"
    TRANSPOSE = "transpose"  # 2-D, stored == canonical.T
    ROW = "row"  # stored (1, n), canonical (n,)


def to_file(array: np.ndarray, layout: Layout) -> np.ndarray:
    """Canonical layout -> stored layout."""
    if layout is Layout.TRANSPOSE:
        return array.T
    if layout is Layout.ROW:
        return array.reshape(1, -1)
    return array


def from_file(array: np.ndarray, layout: Layout) -> np.ndarray:
    """Stored layout -> canonical layout."""
    if layout is Layout.TRANSPOSE:
        return array.T
    if layout is Layout.ROW:
        return array.reshape(-1)
    return array


def stored_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """The shape a canonical `shape` has in the file."""
    if layout is Layout.TRANSPOSE:
        return tuple(reversed(shape))
    if layout is Layout.ROW:
        return (1, *shape)
    return tuple(shape)


@dataclass(frozen=True)
class RefDialect:
    """A reference framework's naming: a core dialect plus the reference's departures from it."""

    name: str  # "tf" / "flax"
    base: Dialect  # whose leaf names and layouts the reference's layers use
    role_leaves: Mapping[Role, tuple[str, bool]] = field(default_factory=dict)  # (leaf, transpose)
    stem_leaves: Mapping[str, str] = field(default_factory=dict)  # module-path suffix -> leaf
    conv1d_bias_row: bool = False  # Conv1D biases stored (1, n)
    main_layer: Mapping[str, str] | None = None  # model_type -> the encoder's main-layer name
    renames: Mapping[str, str] = field(default_factory=dict)  # canonical module -> reference's
    list_item: str = "{}/{}"  # name of item i of list `name`
    untied: tuple[str, ...] = ()  # canonical suffixes the reference only has tied (not stored)

    def leaf(self, role: Role, stem: str) -> tuple[str, bool]:
        name, transpose = self.role_leaves.get(role, leaf_rule(role, self.base))
        for suffix, override in self.stem_leaves.items():
            if stem == suffix or stem.endswith("." + suffix):
                name = override
        return name, transpose


TF = RefDialect(
    "tf", Dialect.KERAS,
    role_leaves={Role.CONV1D: ("weight", False)},
    stem_leaves={"embeddings.word_embeddings": "weight"},
    conv1d_bias_row=True,
    main_layer={"bert": "bert", "gpt2": "transformer"},
    renames={"cls": "mlm___cls"},
    list_item="{}_._{}",
    untied=("cls.predictions.decoder.weight", "lm_head.weight"),
)
FLAX = RefDialect("flax", Dialect.NNX, role_leaves={Role.CONV1D: ("kernel", True)})
DIALECTS = {"tf": TF, "flax": FLAX}
TF_SCOPE = "tf_encoder_decoder_model"  # the Keras name of the top-level model when written


def _module_path(parts: list[str], dialect: RefDialect) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part.isdigit() and out:
            out[-1] = dialect.list_item.format(out[-1], part)
        else:
            out.append(dialect.renames.get(part, part))
    return out


def reference_names(config: EncoderDecoderConfig,
                    dialect: RefDialect) -> dict[str, tuple[str, Layout]]:
    """Canonical name -> (the reference's '/'-joined key, layout), for every stored parameter.

    TF keys leave out the scope: `encoder/bert/embeddings/word_embeddings/weight` is the dataset
    `encoder/<scope>/encoder/bert/embeddings/word_embeddings/weight:0`.
    """
    table = encoder_decoder_table(config)
    conv1d = {p.name.rpartition(".")[0] for p in table.params if p.role is Role.CONV1D}
    out: dict[str, tuple[str, Layout]] = {}
    for p in table.owned:
        if p.name.endswith(dialect.untied):
            raise CheckpointError(f"{p.name} is not tied to the input embeddings; the reference's "
                                  f"{dialect.name} classes always tie it, so this checkpoint has "
                                  f"no {dialect.name} form")
        stem = p.name.rpartition(".")[0]
        side, *mods = stem.split(".")
        if side == "encoder" and dialect.main_layer is not None:
            mt = config.encoder.model_type
            if mt not in dialect.main_layer:
                raise CheckpointError(f"the reference's {dialect.name} naming of a {mt!r} encoder "
                                      "is not known")
            mods = [dialect.main_layer[mt], *mods]
        leaf, transpose = dialect.leaf(p.role, stem)
        if transpose:
            layout = Layout.TRANSPOSE
        elif dialect.conv1d_bias_row and p.role is Role.BIAS and stem in conv1d:
            layout = Layout.ROW
        else:
            layout = Layout.SAME
        out[p.name] = ("/".join([side, *_module_path(mods, dialect), leaf]), layout)
    keys = [k for k, _ in out.values()]
    if len(set(keys)) != len(keys):  # a rule bug, never a user error
        raise AssertionError(f"{dialect.name} naming maps two parameters to one key")
    return out


def canonical_names(config: EncoderDecoderConfig,
                    dialect: RefDialect) -> dict[str, tuple[str, Layout]]:
    """The reverse of `reference_names`: reference key -> (canonical name, layout)."""
    return {key: (name, layout)
            for name, (key, layout) in reference_names(config, dialect).items()}

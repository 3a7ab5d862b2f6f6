"""The reference's TF (`tf_model.h5`) and Flax (`flax_model.msgpack`) weight names, derived from
the core weight-name table.

Follows transformers 4.57's `TFEncoderDecoderModel` / `FlaxEncoderDecoderModel.save_pretrained`
(verified tensor by tensor in tests/fixtures/reference/*/MANIFEST.json; see
tools/fixtures/README.md). Each reference dialect is the core dialect its layers come from
(Keras / NNX leaf names and layouts) plus the few places where the reference departs from it,
written down as data:

- TF: GPT-2's `TFConv1D` keeps `weight` (in, out) and a `(1, n)` bias; BERT-family and
  DistilBERT word-embedding tables are `weight`, not `embeddings`; the encoder's base model sits
  under its main-layer name and some modules are renamed (the registry's `Architecture.tf`:
  `bert`, `roberta`, `electra`, `distilbert`, `transformer`; BERT's LM head `cls` is
  `mlm___cls`); list items are `layer_._0`, `h_._0`; LM heads are always tied.
  Every dataset lives at `<side>/<scope>/<side>/<path>:0` (`<side>` = encoder, decoder,
  enc_to_dec_proj; `<scope>` = the model's Keras name, which the reference's loader ignores).
- Flax: GPT-2's Conv1D kernel is stored (out, in), i.e. transposed; paths are the canonical
  module paths joined with `/`.

Which architectures the reference had a TF / Flax class for is the registry's too
(`Architecture.tf` / `.flax`); asking for another is an error naming the class.

The reverse mapping (file key -> canonical name) is computed from the forward one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from encdec.core.checkpoint import CheckpointError
from encdec.core.config import EncoderDecoderConfig
from encdec.core.registry import Architecture, architecture, encoder_decoder_table
from encdec.core.weights import Dialect, Role, leaf_rule


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
    """A reference framework's naming: a core dialect plus the reference's departures from it.

    Per-architecture facts (the TF main-layer name and module renames, which architectures
    the reference had a class for) come from the registry (`Architecture.tf`, `.flax`).
    """

    name: str  # "tf" / "flax"
    base: Dialect  # whose leaf names and layouts the reference's layers use
    role_leaves: Mapping[Role, tuple[str, bool]] = field(default_factory=dict)  # (leaf, transpose)
    stem_leaves: Mapping[str, str] = field(default_factory=dict)  # module-path suffix -> leaf
    conv1d_bias_row: bool = False  # Conv1D biases stored (1, n)
    main_layer: bool = False  # the encoder's base model sits under its main-layer name
    list_item: str = "{}/{}"  # name of item i of list `name`
    tied_only: bool = False  # the reference always ties LM heads to the input embeddings

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
    main_layer=True,
    list_item="{}_._{}",
    tied_only=True,
)
FLAX = RefDialect("flax", Dialect.NNX, role_leaves={Role.CONV1D: ("kernel", True)})
DIALECTS = {"tf": TF, "flax": FLAX}
TF_SCOPE = "tf_encoder_decoder_model"  # the Keras name of the top-level model when written

@dataclass(frozen=True)
class _Side:
    """How the reference names one side (`encoder` / `decoder`) of a composite."""

    main_layer: str | None  # prepended to the encoder's canonical names (TF only)
    renames: Mapping[str, str]  # canonical module -> reference's


def _side(arch: Architecture, side: str, dialect: RefDialect) -> _Side:
    """The reference's naming of `arch` on `side`; a clear error where it had no class."""
    cls = arch.base_class if side == "encoder" else arch.lm_class
    tf = arch.tf if dialect.name == "tf" else None
    had = tf is not None if dialect.name == "tf" else arch.flax
    if side == "decoder" and tf is not None and not tf.causal_lm:
        had = False
    if not had:
        raise CheckpointError(
            f"the reference's {dialect.name} classes had no {cls} (a {arch.name!r} {side}), so "
            f"this checkpoint has no {dialect.name} form; convert it to pt instead")
    if tf is None:
        return _Side(None, {})
    return _Side(tf.main_layer if dialect.main_layer and side == "encoder" else None,
                 dict(tf.renames))


def _tied_in_reference(config: EncoderDecoderConfig) -> set[str]:
    """Decoder parameters that the reference's tied LM head shares with the input embeddings
    (owned here only when the config unties them)."""
    dec = config.decoder
    tied = type(dec).from_dict({**dec.to_dict(), "tie_word_embeddings": True})
    table = architecture(dec).decoder_table(tied)
    return {"decoder." + p.name for p in table.params if p.tied_to is not None}


def _module_path(parts: list[str], dialect: RefDialect, side: _Side) -> list[str]:
    out: list[str] = [side.main_layer] if side.main_layer else []
    for part in parts:
        if part.isdigit() and out:
            out[-1] = dialect.list_item.format(out[-1], part)
        else:
            out.append(side.renames.get(part, part))
    return out


def reference_names(config: EncoderDecoderConfig,
                    dialect: RefDialect) -> dict[str, tuple[str, Layout]]:
    """Canonical name -> (the reference's '/'-joined key, layout), for every stored parameter.

    TF keys leave out the scope: `encoder/bert/embeddings/word_embeddings/weight` is the dataset
    `encoder/<scope>/encoder/bert/embeddings/word_embeddings/weight:0`.
    """
    table = encoder_decoder_table(config)
    sides = {"encoder": _side(architecture(config.encoder), "encoder", dialect),
             "decoder": _side(architecture(config.decoder), "decoder", dialect),
             "enc_to_dec_proj": _Side(None, {})}
    tied_only = _tied_in_reference(config) if dialect.tied_only else set()
    conv1d = {p.name.rpartition(".")[0] for p in table.params if p.role is Role.CONV1D}
    out: dict[str, tuple[str, Layout]] = {}
    for p in table.saved:  # tie_encoder_decoder's copies too: the reference stores them
        if p.tied_to is None and p.name in tied_only:
            raise CheckpointError(f"{p.name} is not tied to the input embeddings; the reference's "
                                  f"{dialect.name} classes always tie it, so this checkpoint has "
                                  f"no {dialect.name} form")
        stem = p.name.rpartition(".")[0]
        side, *mods = stem.split(".")
        leaf, transpose = dialect.leaf(p.role, stem)
        if transpose:
            layout = Layout.TRANSPOSE
        elif dialect.conv1d_bias_row and p.role is Role.BIAS and stem in conv1d:
            layout = Layout.ROW
        else:
            layout = Layout.SAME
        path = _module_path(mods, dialect, sides[side])
        out[p.name] = ("/".join([side, *path, leaf]), layout)
    keys = [k for k, _ in out.values()]
    if len(set(keys)) != len(keys):  # a rule bug, never a user error
        raise AssertionError(f"{dialect.name} naming maps two parameters to one key")
    return out


def canonical_names(config: EncoderDecoderConfig,
                    dialect: RefDialect) -> dict[str, tuple[str, Layout]]:
    """The reverse of `reference_names`: reference key -> (canonical name, layout)."""
    return {key: (name, layout)
            for name, (key, layout) in reference_names(config, dialect).items()}

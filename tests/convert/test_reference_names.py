"""The reference TF/Flax naming rules against the fixtures' verified tensor-by-tensor facts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encdec.convert.reference import (
    FLAX,
    TF,
    Layout,
    canonical_names,
    from_file,
    reference_names,
    stored_shape,
    to_file,
)
from encdec.core.checkpoint import CheckpointError, read_config_dict
from encdec.core.config import EncoderDecoderConfig, config_from_dict
from encdec.core.registry import architecture

from .conftest import FIXTURES, REFERENCE_FILES

MANIFEST_LAYOUT = {"same": Layout.SAME, "transpose": Layout.TRANSPOSE, "reshape": Layout.ROW}


def _config(name: str) -> EncoderDecoderConfig:
    return config_from_dict(read_config_dict(FIXTURES / name / "pt"), expect=EncoderDecoderConfig)


def _manifest_mapping(name: str, fmt: str) -> dict[str, tuple[str, Layout]]:
    manifest = json.loads((FIXTURES / name / "MANIFEST.json").read_text())
    key = {"tf": "tf/tf_model.h5 -> pt", "flax": "flax/flax_model.msgpack -> pt"}[fmt]
    out = {}
    for entry in manifest[key]:
        stored = entry["name"]
        if fmt == "tf":  # <side>/<scope>/<side>/<path>:0 -> <side>/<path>
            side, _scope, _side, *rest = stored[:-2].split("/")
            stored = "/".join([side, *rest])
        out[entry["pt_name"]] = (stored, MANIFEST_LAYOUT[entry["layout"]])
    return out


DIALECTS = {"tf": TF, "flax": FLAX}


@pytest.mark.parametrize("name, fmt", REFERENCE_FILES)
def test_against_reference_manifest(name, fmt):
    """Every tensor the reference stores, with its layout, and nothing else."""
    assert reference_names(_config(name), DIALECTS[fmt]) == _manifest_mapping(name, fmt)


@pytest.mark.parametrize("name, fmt", REFERENCE_FILES)
def test_reverse_is_computed_inverse(name, fmt):
    config, dialect = _config(name), DIALECTS[fmt]
    forward = reference_names(config, dialect)
    reverse = canonical_names(config, dialect)
    assert len(reverse) == len(forward)
    assert all(forward[name][0] == key for key, (name, _) in reverse.items())


@pytest.mark.parametrize("layout", list(Layout))
def test_layouts_round_trip(layout):
    canonical = np.arange(6, dtype=np.float32).reshape(2, 3) if layout is not Layout.ROW \
        else np.arange(3, dtype=np.float32)
    stored = to_file(canonical, layout)
    assert stored.shape == stored_shape(canonical.shape, layout)
    np.testing.assert_array_equal(from_file(stored, layout), canonical)


def _pair(encoder: str, decoder: str, **decoder_kw) -> EncoderDecoderConfig:
    """Default-sized configs (only names and shapes are computed)."""
    enc = architecture(encoder).config_class()
    dec = architecture(decoder).config_class(is_decoder=True, add_cross_attention=True,
                                             **decoder_kw)
    return EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)


@pytest.mark.parametrize("encoder, decoder, fmt, needle", [
    ("bert-generation", "bert", "tf", "BertGenerationEncoder"),
    ("bert", "bert-generation", "flax", "BertGenerationDecoder"),
    ("bert", "electra", "tf", "ElectraForCausalLM"),
    ("camembert", "roberta", "flax", "CamembertModel"),
    ("bert", "bart", "tf", "BartForCausalLM"),
    ("bert", "mbart", "flax", "MBartForCausalLM"),
    ("bert", "marian", "flax", "MarianForCausalLM"),
    ("bert", "pegasus", "tf", "PegasusForCausalLM"),
])
def test_architectures_the_reference_lacked(encoder, decoder, fmt, needle):
    """Only what the reference's TF / Flax classes had has a reference name (the registry's
    `Architecture.tf` / `.flax`); anything else is an error naming the missing class."""
    with pytest.raises(CheckpointError, match=needle):
        reference_names(_pair(encoder, decoder), DIALECTS[fmt])


def test_untied_head_has_no_tf_form():
    with pytest.raises(CheckpointError, match=r"decoder\.lm_head\.decoder\.weight"):
        reference_names(_pair("roberta", "roberta", tie_word_embeddings=False), TF)


def _holds(arch_name: str, side: str, fmt: str) -> bool:
    """Whether the reference's `fmt` classes held `arch_name` on `side` (asked of the naming)."""
    partner = "bert"
    encoder, decoder = (arch_name, partner) if side == "encoder" else (partner, arch_name)
    if side == "decoder" and not architecture(arch_name).can_decode:
        return False
    if side == "encoder" and not architecture(arch_name).can_encode:  # the BART family
        return False
    try:
        reference_names(_pair(encoder, decoder), DIALECTS[fmt])
    except CheckpointError:
        return False
    return True


def test_docs_table_of_formats_matches_the_registry():
    """docs/convert.md's architecture x format table is what the converter does."""
    from encdec.core.registry import ARCHITECTURES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "convert.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] in ("yes", "no"):
            rows[cells[0]] = [c == "yes" for c in cells[1:]]
    want = {a.name: [_holds(a.name, side, fmt) for fmt in ("tf", "flax")
                     for side in ("encoder", "decoder")] for a in ARCHITECTURES}
    assert rows == want

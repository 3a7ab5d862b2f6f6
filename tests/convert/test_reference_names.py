"""The reference TF/Flax naming rules against the fixtures' verified tensor-by-tensor facts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encdec.core.checkpoint import read_config_dict
from encdec.core.config import EncoderDecoderConfig, config_from_dict
from tools.convert.reference import (
    FLAX,
    TF,
    Layout,
    canonical_names,
    from_file,
    reference_names,
    stored_shape,
    to_file,
)

from .conftest import COMPOSITES, FIXTURES

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


@pytest.mark.parametrize("name", COMPOSITES)
@pytest.mark.parametrize("fmt, dialect", [("tf", TF), ("flax", FLAX)])
def test_against_reference_manifest(name, fmt, dialect):
    """Every tensor the reference stores, with its layout, and nothing else."""
    assert reference_names(_config(name), dialect) == _manifest_mapping(name, fmt)


@pytest.mark.parametrize("name", COMPOSITES)
@pytest.mark.parametrize("dialect", [TF, FLAX])
def test_reverse_is_computed_inverse(name, dialect):
    config = _config(name)
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

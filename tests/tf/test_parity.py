"""Keras variables against the weight table (the parity checks of every backend:
tests/harness/test_architectures.py and test_parity.py)."""

from __future__ import annotations

import pytest

from encdec.core import weights
from encdec.tf import EncoderDecoderModel, TFEncoderDecoderModel, params
from tests.conftest import COMPOSITES

NAMES = sorted(COMPOSITES)


@pytest.mark.parametrize("name", NAMES)
def test_variables_are_exactly_the_table(name, reference_dir):
    """Every Keras variable has a path in the table and every owned table entry a variable; a
    tied entry a model holds (a decoder bias that is the head's `bias`) is its source's."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    table = model.table()
    found = params.variables(model)
    by_path = {weights.leaf(p, weights.Dialect.KERAS): p for p in table.params}
    paths = {weights.leaf(p, weights.Dialect.KERAS) for p in table.owned}
    assert paths <= set(found) <= set(by_path)
    for path in set(found) - paths:
        src = table.by_name[by_path[path].tied_to]
        assert found[path] is found[weights.leaf(src, weights.Dialect.KERAS)], path
    assert len({id(v) for v in model.weights}) == len(paths)
    # the reference's state-dict names as attributes
    layer = model.encoder.encoder.layer[0]
    assert layer.attention.self.query.kernel is params.variables(model)[
        "encoder.encoder.layer.0.attention.self.query.kernel"]


def test_tf_alias():
    assert TFEncoderDecoderModel is EncoderDecoderModel

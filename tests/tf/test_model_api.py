"""Keras-only ways into the composite's forward (the reference's API, routed keyword arguments
included, is checked in every backend in tests/harness/test_migration.py): a dict as the first
argument (what `model.fit` passes) and a call inside a compiled `tf.function`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from encdec.tf import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import pair_batch
from tests.generation import oracle


# CI: the routed arguments in tf, eager, against transformers stay fast
# (tests/harness/test_migration.py); through a dict and under XLA is this test's only
@pytest.mark.slow
def test_routed_kwargs_through_a_dict_and_under_xla():
    model = EncoderDecoderModel.from_pretrained(oracle.checkpoint("bert2bert"))
    b = pair_batch("bert2bert")
    (B, S), T = b["input_ids"].shape, b["decoder_input_ids"].shape[1]
    rng = np.random.default_rng(0)
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"],
              token_type_ids=rng.integers(0, 2, (B, S)), position_ids=rng.integers(0, 60, (B, S)),
              decoder_token_type_ids=rng.integers(0, 2, (B, T)),
              decoder_position_ids=rng.integers(0, 60, (B, T)))
    eager = model(**kw).logits
    assert tol.max_abs_diff(model(**{k: kw[k] for k in list(kw)[:3]}).logits, eager) > 1e-3
    tol.assert_close(model(kw).logits, eager, 0.0, "dict input")
    compiled = tf.function(lambda x: model(**x).logits, jit_compile=True)
    tol.assert_close(compiled({k: tf.constant(v) for k, v in kw.items()}), eager, tol.FORWARD,
                     "under XLA")

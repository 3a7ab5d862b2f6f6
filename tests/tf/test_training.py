"""What only Keras has in training: dropout only with `training=True`, and the forward inside
`tf.function` (graph and XLA) equals the eager one. (Gradients against the reference in every
backend: tests/harness/test_training.py; `compile` + `fit` on a dataset of dicts with the
model's own loss, and generate after it: tests/generation/test_updated_weights.py.)"""

from __future__ import annotations

import functools

import pytest
import tensorflow as tf

from encdec.tf import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import make_batch
from tests.generation import oracle

BATCH = {k: v for k, v in make_batch().items() if k != "decoder_input_ids"}


@functools.cache
def model(name: str) -> EncoderDecoderModel:
    """A shared model of pair `name`."""
    return EncoderDecoderModel.from_pretrained(oracle.checkpoint(name))


def test_dropout_only_when_training():
    m = model("bert2gpt2_proj")
    a, c = m(**BATCH).logits, m(**BATCH).logits
    assert tol.max_abs_diff(a, c) == 0.0
    t1, t2 = m(**BATCH, training=True).logits, m(**BATCH, training=True).logits
    assert tol.max_abs_diff(t1, t2) > 1e-3 and tol.max_abs_diff(a, t1) > 1e-3


# XLA in the fast subset; the plain graph: CI
@pytest.mark.parametrize("jit", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["graph", "xla"])
def test_forward_inside_tf_function(jit):
    m = model("bert2gpt2_proj")
    eager = m(**BATCH)

    @tf.function(jit_compile=jit)
    def forward(input_ids, attention_mask, labels):
        out = m(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return out.loss, out.logits

    loss, logits = forward(**BATCH)
    tol.assert_close(loss, eager.loss, tol.FORWARD, "loss")
    tol.assert_close(logits, eager.logits, tol.FORWARD, "logits")

"""What only Keras has of the BART-family causal LM (issue 9): its forward and training step
under `tf.function(jit_compile=True)` (dropout and LayerDrop draw afresh inside the compiled
program). The causal LM against transformers in every backend: tests/harness/test_causal_lm.py;
`compile` + `fit` with LayerDrop on, the sinusoidal table left as it was (bert2pegasus):
tests/generation/test_updated_weights.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import encdec.tf
from encdec.core.registry import architecture
from tests import tolerances as tol
from tests.conftest import tiny_kwargs
from tests.harness.test_causal_lm import inputs

pytestmark = pytest.mark.slow  # the same code eagerly, in the fast subset: test_causal_lm.py


def tf_(x: dict) -> dict:
    return {k: tf.constant(v) for k, v in x.items()}


def test_forward_and_dropout_under_xla():
    """The causal LM (padded masks, encoder states, labels) under tf.function(jit_compile=True)
    equals eager in inference; in training, dropout and LayerDrop draw differently on each call
    of the compiled program, with a finite loss and a gradient."""
    cls = getattr(encdec.tf, architecture("mbart").lm_class)
    config = cls.config_class(**tiny_kwargs("mbart"), pad_token_id=0, dropout=0.2,
                              attention_dropout=0.2, activation_dropout=0.2,
                              decoder_layerdrop=0.5)
    keras.utils.set_random_seed(0)
    model = cls(config)
    x = tf_(inputs(5))
    eager = model(**x)

    @tf.function(jit_compile=True)
    def forward(x):
        out = model(**x)
        return out.loss, out.logits

    loss, logits = forward(x)
    tol.assert_close(loss.numpy(), eager.loss.numpy(), tol.FORWARD, "xla loss")
    tol.assert_close(logits.numpy(), eager.logits.numpy(), tol.FORWARD, "xla logits")

    @tf.function(jit_compile=True)
    def loss_and_grad(x):
        with tf.GradientTape() as tape:
            loss = model(**x, training=True).loss
        return loss, tape.gradient(loss, model.get_input_embeddings().embeddings)

    losses = set()
    for _ in range(3):
        loss, grad = loss_and_grad(x)
        assert np.isfinite(float(loss))
        assert np.abs(tf.convert_to_tensor(grad).numpy()).max() > 0
        losses.add(float(loss))
    assert len(losses) == 3


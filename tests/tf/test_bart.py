"""What only Keras has of the BART-family causal LM (issue 9): its forward and training step
under `tf.function(jit_compile=True)` (dropout and LayerDrop draw afresh inside the compiled
program), and `compile` + `fit` with LayerDrop on, the sinusoidal table left as it was. The
causal LM against transformers in every backend: tests/harness/test_causal_lm.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import encdec.tf
from encdec.core.registry import architecture
from encdec.tf import EncoderDecoderModel, params
from tests import tolerances as tol
from tests.conftest import make_batch, tiny_kwargs
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


@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")  # the BERT pooler
@pytest.mark.parametrize("name", ["bert2bart", "bert2pegasus"])
def test_fit_lowers_the_loss(reference_dir, name):
    """compile(optimizer=Adam) with no loss + fit on dicts with labels, LayerDrop on; the
    sinusoidal table (Pegasus) stays as it was."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    model.config.decoder.decoder_layerdrop = 0.3
    b = make_batch()
    data = {k: b[k] for k in ("input_ids", "attention_mask", "labels")}
    before = float(model(**data).loss)
    positions = params.variables(model)["decoder.model.decoder.embed_positions.embeddings"]
    table = positions.numpy()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(3).repeat(8)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    after = float(model(**data).loss)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.1, (before, after)
    assert np.array_equal(positions.numpy(), table) == (name == "bert2pegasus")

"""Training: gradients equal transformers' (bound 1e-4), `model.fit` on a dataset of dicts with
the model's own loss lowers it, dropout only with training=True, and the forward inside
`tf.function` (graph and XLA) equals the eager one."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from encdec.core import weights
from encdec.tf import EncoderDecoderModel, params
from tests.conftest import make_batch

from .conftest import max_diff, to_torch

GRAD_TOL = 1e-4
TOL = 1e-5


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
def test_against_hf_gradients(name, reference_dir, hf_model):
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)  # dropout off in both
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    out = ref(**to_torch(kw))
    out.loss.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}

    table = weights.encoder_decoder_table(ours.config)
    owned = {weights.leaf(p, weights.Dialect.KERAS): p for p in table.owned}
    variables = params.variables(ours)
    with tf.GradientTape() as tape:
        loss = ours(**kw).loss
    paths = sorted(owned)
    grads = dict(zip(paths, tape.gradient(loss, [variables[p] for p in paths]), strict=True))
    grads = {path: g for path, g in grads.items() if g is not None}  # not the pooler
    assert abs(out.loss.item() - float(loss)) < TOL
    # transformers' named_parameters lists a tied tensor once, under its source's name
    assert {owned[p].name for p in grads} == set(ref_grads)
    for path, g in grads.items():
        p = owned[path]
        g = weights.from_dialect(p, tf.convert_to_tensor(g).numpy(), weights.Dialect.KERAS)
        assert max_diff(ref_grads[p.name], g) < GRAD_TOL, p.name


# the encoder's pooler gets no gradient in a seq2seq loss (as in the reference), which Keras notes
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
def test_fit_lowers_the_loss(reference_dir):
    """compile(optimizer=Adam) with no loss + fit on dicts that include labels."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    b = make_batch()
    data = {k: b[k] for k in ("input_ids", "attention_mask", "labels")}
    before = float(model(**data).loss)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(3).repeat(8)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    after = float(model(**data).loss)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.1, (before, after)


def test_dropout_only_when_training(reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"])
    a, c = model(**kw).logits, model(**kw).logits
    assert max_diff(a, c) == 0.0
    t1, t2 = model(**kw, training=True).logits, model(**kw, training=True).logits
    assert max_diff(t1, t2) > 1e-3 and max_diff(a, t1) > 1e-3


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_forward_inside_tf_function(jit, reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2_proj"))
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    eager = model(**kw)

    @tf.function(jit_compile=jit)
    def forward(input_ids, attention_mask, labels):
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return out.loss, out.logits

    loss, logits = forward(**kw)
    assert abs(float(loss) - float(eager.loss)) < TOL
    assert max_diff(logits, eager.logits) < TOL

"""What only TensorFlow has of cached decoding: the static-cache contract's step compiled by
XLA and called from Python (`tf.function(jit_compile=True)`: one trace for every step). The
contract itself, eagerly and in every backend: tests/harness/test_decoding.py; the whole decode
loop as one XLA program (a `tf.while_loop` over `decode_step` with a traced index): `generate`,
against transformers' tokens for every decoder family in tests/harness/test_architectures.py;
the compiled generate programs reading the weights `fit` updated:
tests/generation/test_updated_weights.py."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from encdec.tf import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import make_batch


@pytest.fixture(scope="module")
def model(reference_dir):
    """bert2gpt2_proj (GPT-2's step and `enc_to_dec_proj`), shared by this module's tests."""
    return EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2_proj"))


def test_decode_step_under_xla_one_trace(model):
    """Token by token through `init_cache` / `decode_step` compiled by XLA, two beams sharing
    the un-repeated cross K/V, == one full forward; one trace for every step (cache_index is
    a traced scalar)."""
    b = make_batch(seed=2)
    ids, mask, dec = b["input_ids"], b["attention_mask"], b["decoder_input_ids"]
    (be, T), beams = dec.shape, 2
    rows = np.repeat(dec, beams, axis=0)
    rows[1::2, 2:] = rows[1::2, 2:][:, ::-1]
    full = model(input_ids=np.repeat(ids, beams, 0), attention_mask=np.repeat(mask, beams, 0),
                 decoder_input_ids=rows).logits
    states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    init_cache = tf.function(model.init_cache, jit_compile=True)
    decode_step = tf.function(model.decode_step, jit_compile=True)
    cache = init_cache(states, mask, be * beams, T + 3)
    assert cache[0][0].shape[0] == be * beams and cache[0][2].shape[0] == be
    logits = []
    for t in range(T):
        step, cache = decode_step(rows[:, t:t + 1], cache, tf.constant(t), mask)
        logits.append(step)
    tol.assert_close(tf.concat(logits, axis=1).numpy(), full.numpy(), tol.CACHE, "xla steps")
    assert decode_step.experimental_get_tracing_count() == 1

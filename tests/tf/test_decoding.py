"""What only TensorFlow has of cached decoding: the static-cache contract compiled by XLA
(`tf.function(jit_compile=True)`: one trace for every step, and the whole teacher-forced loop
as one program), and the compiled generate programs reading the weights `fit` updated.
The contract itself, eagerly and in every backend: tests/harness/test_decoding.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from encdec.tf import EncoderDecoderModel, generation
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


@pytest.mark.slow  # XLA's compiled steps: test_decode_step_under_xla_one_trace (fast)
def test_decode_loop_in_one_xla_program(model):
    """The whole teacher-forced loop as one XLA program (tf.while_loop over a traced index)."""
    b = make_batch(seed=5)
    ids, mask, dec = b["input_ids"], b["attention_mask"], b["decoder_input_ids"]
    B, T = dec.shape
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits

    @tf.function(jit_compile=True)
    def run(ids, mask, dec):
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        cache = model.init_cache(states, mask, B, T)
        out = tf.TensorArray(tf.float32, size=T)

        def body(t, cache, out):
            # dec[:, t, None] keeps the static shape (B, 1); dec[:, t:t + 1] with a traced t has
            # a dynamic length, which XLA pads to its bound (T) and writes T cache positions
            step, cache = model.decode_step(dec[:, t, None], cache, t, mask)
            return t + 1, cache, out.write(t, step[:, 0])

        _, _, out = tf.while_loop(lambda t, *_: t < T, body, (tf.constant(0), cache, out))
        return tf.transpose(out.stack(), [1, 0, 2])  # (B, T, V)

    tol.assert_close(run(ids, mask, dec).numpy(), full.numpy(), tol.CACHE, "xla loop")


def _decode(model, ids, mask) -> dict[str, np.ndarray]:
    """Greedy sequences and scores, and beam-2 sequences (two compiled programs)."""
    greedy = model.generate(ids, mask, max_new_tokens=6, min_new_tokens=6, output_scores=True,
                            return_dict_in_generate=True)
    beams = model.generate(ids, mask, num_beams=2, max_new_tokens=6, min_new_tokens=6)
    return dict(sequences=np.asarray(greedy["sequences"]), beams=np.asarray(beams),
                scores=np.stack([np.asarray(s) for s in greedy["scores"]]))


# slow: generate after updated weights in the fast subset: tests/generation/
# test_updated_weights.py (pt's optimizer step); `fit` itself: tests/tf/test_training.py
@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2"])  # tied BERT / GPT-2 LM heads
def test_generate_after_fit_uses_the_new_weights(name, reference_dir, tmp_path):
    """The compiled generate programs built before a `model.fit` step run again after it
    (no retrace) and read the updated weights: tokens and scores equal those of a fresh load
    of the stepped model's save, and differ from before the step."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    batch = make_batch(0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    before = _decode(model, ids, mask)  # traces and compiles the greedy and beam programs
    traces = dict(generation.TRACES)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.05))  # ~0.05 per weight
    data = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    model.fit(tf.data.Dataset.from_tensor_slices(data).batch(len(ids)), epochs=1, verbose=0)
    after = _decode(model, ids, mask)
    assert dict(generation.TRACES) == traces  # the same programs ran
    assert not np.array_equal(after["sequences"], before["sequences"])
    assert tol.max_abs_diff(after["scores"], before["scores"]) > 1e-2
    model.save_pretrained(tmp_path)
    fresh = _decode(EncoderDecoderModel.from_pretrained(tmp_path), ids, mask)
    for key in ("sequences", "beams"):
        np.testing.assert_array_equal(after[key], fresh[key], err_msg=key)
    tol.assert_close(after["scores"], fresh["scores"], tol.SCORES, "scores after fit vs fresh")

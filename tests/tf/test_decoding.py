"""Cached decoding: the public forward's legacy `past_key_values` and the static-cache
contract (`init_cache` / `decode_step`, beams sharing cross K/V) against one full forward,
eagerly and under `tf.function(jit_compile=True)`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from encdec.tf import EncoderDecoderModel, generation
from tests import tolerances as tol
from tests.conftest import make_batch

from .conftest import max_diff, to_torch

TOL = 1e-5
NAMES = ["bert2bert", "bert2gpt2", "bert2gpt2_proj"]


def _inputs(seed=0):
    b = make_batch(seed=seed)
    return b["input_ids"], b["attention_mask"], b["decoder_input_ids"]


@pytest.mark.parametrize("name", NAMES)
def test_past_key_values_equals_full_forward(name, reference_dir, hf_model):
    import torch

    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, dec = _inputs()
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    enc = model.encoder(input_ids=ids, attention_mask=mask)
    out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, :3],
                use_cache=True)
    steps = [out.logits]
    past = out.past_key_values
    assert len(past) == 2 and len(past[0]) == 4
    for t in range(3, dec.shape[1]):
        out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, t:t + 1],
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        steps.append(out.logits)
    assert max_diff(full, tf.concat(steps, axis=1)) < TOL
    # and the reference's cached step gives the same logits as ours
    ref = hf_model(reference_dir(name))
    t = to_torch(dict(ids=ids, mask=mask, dec=dec))
    with torch.no_grad():
        r = ref(input_ids=t["ids"], attention_mask=t["mask"], decoder_input_ids=t["dec"][:, :3],
                use_cache=True)
        r = ref(input_ids=t["ids"], attention_mask=t["mask"], decoder_input_ids=t["dec"][:, 3:4],
                past_key_values=r.past_key_values, use_cache=True)
    assert max_diff(r.logits, steps[1]) < TOL


def _beam_rows(dec: np.ndarray, beams: int) -> np.ndarray:
    rows = np.repeat(dec, beams, axis=0)  # rows b*k .. b*k+k-1 belong to example b
    if beams == 2:  # make the two beams of an example differ
        rows[1::2, 2:] = rows[1::2, 2:][:, ::-1]
    return rows


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beams", [1, 2])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_decode_step_equals_full_forward(name, beams, jit, reference_dir):
    """Token by token through the static cache == one full forward over the repeated batch."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, dec = _inputs(seed=2)
    be, T = dec.shape
    rows = _beam_rows(dec, beams)
    full = model(input_ids=np.repeat(ids, beams, 0), attention_mask=np.repeat(mask, beams, 0),
                 decoder_input_ids=rows).logits  # (Be*k, T, V)
    states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    init_cache, decode_step = model.init_cache, model.decode_step
    if jit:
        init_cache = tf.function(init_cache, jit_compile=True)
        decode_step = tf.function(decode_step, jit_compile=True)
    cache = init_cache(states, mask, be * beams, T + 3)
    c = model.config.decoder
    h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    assert cache[0][0].shape == (be * beams, h, T + 3, d)
    assert cache[0][2].shape[0] == be  # cross K/V: the encoder's batch, never repeated
    logits = []
    for t in range(T):
        step, cache = decode_step(rows[:, t:t + 1], cache, tf.constant(t), mask)
        logits.append(step)
    assert max_diff(full, tf.concat(logits, axis=1)) < TOL
    if jit:  # one trace for every step: cache_index is a traced scalar
        assert decode_step.experimental_get_tracing_count() == 1


def test_decode_loop_in_one_xla_program(reference_dir):
    """The whole teacher-forced loop as one XLA program (tf.while_loop over a traced index)."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2_proj"))
    ids, mask, dec = _inputs(seed=5)
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

    assert max_diff(full, run(ids, mask, dec)) < TOL


def test_decode_step_chunk_then_tokens(reference_dir):
    """A prompt of several tokens in one step, then single tokens (cache_index a Python int)."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    ids, mask, dec = _inputs(seed=3)
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    cache = model.init_cache(states, mask, dec.shape[0], max_length=16)
    first, cache = model.decode_step(dec[:, :4], cache, 0, mask)
    rest = []
    for t in range(4, dec.shape[1]):
        step, cache = model.decode_step(dec[:, t:t + 1], cache, t, mask)
        rest.append(step)
    assert max_diff(full, tf.concat([first, *rest], axis=1)) < TOL


def test_decode_step_with_decoder_padding(reference_dir):
    """A decoder padding mask over the cache positions == the forward's decoder_attention_mask."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    ids, mask, dec = _inputs(seed=4)
    B, T = dec.shape
    dmask = np.ones((B, T), np.int64)
    dmask[0, 1:3] = 0
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                 decoder_attention_mask=dmask).logits
    states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    cache = model.init_cache(states, mask, B, max_length=T)
    steps = []
    for t in range(T):
        step, cache = model.decode_step(dec[:, t:t + 1], cache, t, mask,
                                        decoder_attention_mask=dmask)
        steps.append(step)
    assert max_diff(full, tf.concat(steps, axis=1)) < TOL




def _decode(model, ids, mask) -> dict[str, np.ndarray]:
    """Greedy sequences and scores, and beam-2 sequences (two compiled programs)."""
    greedy = model.generate(ids, mask, max_new_tokens=6, min_new_tokens=6, output_scores=True,
                            return_dict_in_generate=True)
    beams = model.generate(ids, mask, num_beams=2, max_new_tokens=6, min_new_tokens=6)
    return dict(sequences=np.asarray(greedy["sequences"]), beams=np.asarray(beams),
                scores=np.stack([np.asarray(s) for s in greedy["scores"]]))


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

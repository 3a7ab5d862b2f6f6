"""What only Flax has of cached decoding: the static-cache contract (`init_cache` /
`decode_step`) as one `jax.jit` program over NNX state, a `lax.fori_loop` with a traced
`cache_index`, and `generate` after an `nnx.Optimizer` update. The contract itself, eagerly and
in every backend: tests/harness/test_decoding.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from encdec.flax import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import make_batch


# slow: the compiled decode loop in the fast subset is generate's (tests/harness/
# test_architectures.py, flax). GPT-2's step with `enc_to_dec_proj`; a pre-norm BART decoder
@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert2gpt2_proj", "roberta2mbart"])
def test_decode_step_under_jit_fori_loop(name, reference_dir):
    """Greedy-shaped loop compiled once: jax.jit over (nnx state, ids), lax.fori_loop with a
    traced cache_index writing one token per step, two beams == one full forward."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    b = make_batch(seed=6, pad=model.config.encoder.pad_token_id or 0)
    beams, T, max_length = 2, 5, 8
    be = b["input_ids"].shape[0]
    ids = np.random.default_rng(0).integers(4, 99, (be * beams, T)).astype(np.int32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, input_ids, attention_mask, ids):
        m = nnx.merge(graphdef, state)
        enc = m.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cache = m.init_cache(enc, attention_mask, ids.shape[0], max_length)
        vocab = m.config.decoder.vocab_size
        out = jnp.zeros((ids.shape[0], ids.shape[1], vocab), jnp.float32)

        def body(t, carry):
            cache, out = carry
            tok = jax.lax.dynamic_slice_in_dim(ids, t, 1, axis=1)  # (B, 1)
            logits, cache = m.decode_step(tok, cache, t, attention_mask)
            return cache, jax.lax.dynamic_update_slice_in_dim(out, logits, t, axis=1)

        _, out = jax.lax.fori_loop(0, ids.shape[1], body, (cache, out))
        return out

    got = run(state, b["input_ids"], b["attention_mask"], ids)
    full = model(input_ids=np.repeat(b["input_ids"], beams, axis=0),
                 attention_mask=np.repeat(b["attention_mask"], beams, axis=0),
                 decoder_input_ids=ids).logits
    tol.assert_close(np.asarray(got), np.asarray(full), tol.CACHE, f"{name} fori_loop")


# slow: generate after updated weights in the fast subset: tests/generation/
# test_updated_weights.py (pt's optimizer step); nnx.jit training: tests/flax/test_training.py
@pytest.mark.slow
def test_generate_follows_an_optax_update(reference_dir, tmp_path):
    """`generate` after `nnx.Optimizer.update` (in a jitted train step) decodes with the updated
    weights, not ones captured by the compiled program of an earlier call: its tokens equal
    those of a fresh model loaded from the updated weights, and differ from the old ones."""
    import optax

    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    b = make_batch(seed=8)
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    greedy_before = np.asarray(model.generate(b["input_ids"], b["attention_mask"], **kw))
    beams_before = np.asarray(model.generate(b["input_ids"], b["attention_mask"], num_beams=2,
                                             **kw))
    optimizer = nnx.Optimizer(model, optax.adamw(0.05), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        grads = nnx.grad(lambda m: m(**batch).loss)(model)
        optimizer.update(model, grads)

    train_step(model, optimizer, {k: jnp.asarray(b[k]) for k in
                                  ("input_ids", "attention_mask", "decoder_input_ids", "labels")})
    model.eval()
    greedy = np.asarray(model.generate(b["input_ids"], b["attention_mask"], **kw))
    beams = np.asarray(model.generate(b["input_ids"], b["attention_mask"], num_beams=2, **kw))
    model.save_pretrained(tmp_path)
    fresh = EncoderDecoderModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(
        greedy, np.asarray(fresh.generate(b["input_ids"], b["attention_mask"], **kw)))
    np.testing.assert_array_equal(beams, np.asarray(
        fresh.generate(b["input_ids"], b["attention_mask"], num_beams=2, **kw)))
    assert not np.array_equal(greedy, greedy_before)
    assert not np.array_equal(beams, beams_before)

"""Cached decoding == one full forward (DESIGN.md bound 1e-5): the public forward with the
reference's legacy `past_key_values`, and the static-cache contract (`init_cache` /
`decode_step`) eagerly, with beams sharing un-repeated cross K/V, and under `jax.jit` with a
`lax.fori_loop` over steps (traced `cache_index`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from encdec.flax import EncoderDecoderModel
from tests.conftest import make_batch

from .conftest import max_diff

TOL = 1e-5


def _full(model, b, decoder_input_ids, encoder_repeat: int = 1):
    """Full-forward logits (B, T, V) with the encoder batch repeated `encoder_repeat` times."""
    return model(input_ids=np.repeat(b["input_ids"], encoder_repeat, axis=0),
                 attention_mask=np.repeat(b["attention_mask"], encoder_repeat, axis=0),
                 decoder_input_ids=decoder_input_ids).logits


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
def test_past_key_values_equals_full_forward(name, reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    b = make_batch(seed=4)
    ids = b["decoder_input_ids"]
    full = _full(model, b, ids)
    enc = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    out = model(encoder_outputs=enc, attention_mask=b["attention_mask"],
                decoder_input_ids=ids[:, :5], use_cache=True)  # a 5-token prefix, then 1 by 1
    steps = [out.logits]
    past = out.past_key_values
    assert len(past) == 2 and len(past[0]) == 4 and past[0][0].shape[2] == 5
    for t in range(5, ids.shape[1]):
        out = model(encoder_outputs=enc, attention_mask=b["attention_mask"],
                    decoder_input_ids=ids[:, t:t + 1], past_key_values=past, use_cache=True)
        steps.append(out.logits)
        past = out.past_key_values
    assert max_diff(full, jnp.concatenate(steps, axis=1)) < TOL


def _decode_eager(model, b, ids, beams: int, max_length: int):
    enc = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    cache = model.init_cache(enc.last_hidden_state, b["attention_mask"], ids.shape[0], max_length)
    logits, new = model.decode_step(ids[:, :2], cache, 0, b["attention_mask"])  # 2-token chunk
    steps = [logits]
    for t in range(2, ids.shape[1]):
        logits, new = model.decode_step(ids[:, t:t + 1], new, jnp.int32(t), b["attention_mask"])
        steps.append(logits)
    return jnp.concatenate(steps, axis=1), cache, new


@pytest.mark.parametrize("name,beams", [("bert2bert", 1), ("bert2bert", 2),
                                        ("bert2gpt2_proj", 1), ("bert2gpt2_proj", 2)])
def test_decode_step_equals_full_forward(name, beams, reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    b = make_batch(seed=5)
    be, T = b["input_ids"].shape[0], 7
    ids = np.random.default_rng(beams).integers(4, 99, (be * beams, T))
    ids[:, 0] = model.config.decoder_start_token_id
    got, cache, new = _decode_eager(model, b, ids, beams, max_length=10)
    assert max_diff(_full(model, b, ids, beams), got) < TOL
    c = model.config.decoder
    h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    S = b["input_ids"].shape[1]
    for layer_cache in new:
        k_buf, v_buf, ck, cv = layer_cache
        assert k_buf.shape == v_buf.shape == (be * beams, h, 10, d)
        assert ck.shape == cv.shape == (be, h, S, d)  # cross K/V never repeated for beams
        assert not np.asarray(k_buf[:, :, T:]).any()  # positions past the written ones untouched
    for (_, _, ck0, cv0), (_, _, ck1, cv1) in zip(cache, new, strict=True):
        assert ck0 is ck1 and cv0 is cv1  # computed once, passed through


@pytest.mark.parametrize("name", ["bert2bert_proj", "bert2gpt2"])
def test_decode_step_under_jit_fori_loop(name, reference_dir):
    """Greedy-shaped loop compiled once: jax.jit over (nnx state, ids), lax.fori_loop with a
    traced cache_index writing one token per step."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    b = make_batch(seed=6)
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
    assert max_diff(_full(model, b, ids, beams), got) < TOL


def test_decode_step_with_decoder_padding_mask(reference_dir):
    """A decoder padding mask over the cache positions equals the forward's
    decoder_attention_mask (right padding inside the prefix)."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    b = make_batch(seed=7)
    ids = b["decoder_input_ids"][:, :5]
    dmask = np.ones((ids.shape[0], 8), np.int64)
    dmask[1, 2] = 0  # a hole in row 1
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 decoder_input_ids=ids, decoder_attention_mask=dmask[:, :5]).logits
    enc = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    cache = model.init_cache(enc.last_hidden_state, b["attention_mask"], ids.shape[0], 8)
    steps = []
    for t in range(ids.shape[1]):
        logits, cache = model.decode_step(ids[:, t:t + 1], cache, t, b["attention_mask"], dmask)
        steps.append(logits)
    assert max_diff(full, jnp.concatenate(steps, axis=1)) < TOL
    model.train()  # the contract runs in inference mode regardless
    logits, _ = model.decode_step(ids[:, -1:], cache, ids.shape[1] - 1, b["attention_mask"], dmask)
    assert max_diff(steps[-1], logits) < TOL


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

"""The static-cache decoding contract (`init_cache` / `decode_step`, what `generate` runs) in
every backend: a prompt chunk then one token at a time (the index a Python int or a framework
scalar) equals one full forward (tests/tolerances.py CACHE) — with beams sharing the encoder's
un-repeated cross K/V, with a decoder padding mask over the cache positions, and in training
mode (decoding runs without dropout).

One pair per decoder family's `step` (BERT; GPT-2 with `enc_to_dec_proj`; BART). The public
forward's legacy `past_key_values`: test_architectures.py; the compiled forms: the whole loop
in one XLA / `jax.jit` program is `generate`'s (test_architectures.py, tokens against
transformers), a step under tf.function with one trace: tests/tf/test_decoding.py."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests import tolerances as tol
from tests.conftest import pair_batch
from tests.harness.backends import ADAPTERS

NAMES = ["bert2bert", "bert2gpt2_proj", "bert2bart"]
# pt in the fast subset; tf's and flax's steps there run compiled inside generate
# (test_architectures.py's tokens against transformers, bert2bert)
PT_FAST = [pytest.param(b, marks=() if b == "pt" else pytest.mark.slow) for b in ADAPTERS]


def decode(ad, model, states, mask, rows: np.ndarray, max_length: int, dmask=None):
    """(logits (B, T, V) of `rows` decoded as 2 tokens then 1 by 1, the initial cache, the
    final cache)."""
    cache = model.init_cache(states, mask, rows.shape[0], max_length)
    kw = {} if dmask is None else ad.inputs({"decoder_attention_mask": dmask})
    ids = ad.inputs({"rows": rows})["rows"]
    logits, new = model.decode_step(ids[:, :2], cache, 0, mask, **kw)
    steps = [np.asarray(logits)]
    for t in range(2, rows.shape[1]):
        index = t if t % 2 else ad.inputs({"t": np.int32(t)})["t"]
        logits, new = model.decode_step(ids[:, t:t + 1], new, index, mask, **kw)
        steps.append(np.asarray(logits))
    return np.concatenate(steps, axis=1), cache, new


@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
@pytest.mark.parametrize("name", NAMES)
def test_decode_step_equals_full_forward(ours, backend, name):
    model, b = ours(name, backend.name), pair_batch(name, seed=2)
    src, src_mask, dec = b["input_ids"], b["attention_mask"], b["decoder_input_ids"]
    (be, S), T = src.shape, dec.shape[1]
    c = model.config.decoder
    h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    x = backend.inputs({"input_ids": src, "attention_mask": src_mask})
    states = model.encoder(**x).last_hidden_state
    # two beams per example (rows b*k .. b*k+k-1 belong to example b, and differ); then one
    # beam with a decoder padding mask over the cache positions (== the forward's
    # decoder_attention_mask), in training mode
    dmask = np.ones((be, T + 3), np.int64)
    dmask[0, 1:3] = 0
    for beams, mask in ((2, None), (1, dmask)):
        rows = np.repeat(dec, beams, 0)
        rows[1::2, 2:] = rows[1::2, 2:][:, ::-1]
        inputs = dict(input_ids=np.repeat(src, beams, 0),
                      attention_mask=np.repeat(src_mask, beams, 0), decoder_input_ids=rows)
        if mask is not None:
            inputs["decoder_attention_mask"] = mask[:, :T]
        full = backend.forward(model, inputs)["logits"]
        with backend.training(model) if mask is not None else contextlib.nullcontext():
            got, cache, new = decode(backend, model, states, x["attention_mask"], rows, T + 3,
                                     mask)
        tol.assert_close(got, full, tol.CACHE, f"{name} {backend.name} beams={beams}")
        for (_, _, ck0, cv0), (k, v, ck, cv) in zip(cache, new, strict=True):
            assert tuple(k.shape) == tuple(v.shape) == (be * beams, h, T + 3, d)
            assert tuple(ck.shape) == tuple(cv.shape) == (be, h, S, d)  # never repeated
            assert ck is ck0 and cv is cv0  # computed once, passed through
            assert not np.asarray(k)[:, :, T:].any()  # positions not written stay zero

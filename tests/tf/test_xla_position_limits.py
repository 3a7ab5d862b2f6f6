"""The position limits inside XLA-compiled TF code (`tf.function(jit_compile=True)`): refused
on the host from static shapes, before any gather (XLA would clamp an out-of-range index
silently). (The eager forms in every backend: tests/harness/test_registry.py.)"""

from __future__ import annotations

import re

import pytest
import tensorflow as tf

import encdec.tf as etf
from encdec.core import EncoderDecoderConfig, RobertaConfig

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=10)  # pad 1: positions 2..9
LIMIT = re.escape("the roberta position table serves 8 (max_position_embeddings=10 minus the "
                  "offset 2)")


def model() -> etf.EncoderDecoderModel:
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        RobertaConfig(**TINY), RobertaConfig(**TINY, is_decoder=True, add_cross_attention=True),
        decoder_start_token_id=0, pad_token_id=1)
    return etf.EncoderDecoderModel(config=config)


def test_encoder_under_xla():
    m = model()
    encode = tf.function(lambda ids: m.encoder(input_ids=ids).last_hidden_state,
                         jit_compile=True)
    encode(tf.fill((1, 8), 5))  # exactly the table
    with pytest.raises(ValueError, match="input_ids has 9 tokens; " + LIMIT):
        encode(tf.fill((1, 9), 5))


@pytest.mark.slow  # CI: a decode-step program (the host check it relies on: test_encoder_under_xla)
def test_decode_step_under_xla():
    m = model()
    cache = m.init_cache(m.encoder(input_ids=tf.fill((1, 5), 5)).last_hidden_state, None, 1, 8)
    wide = tuple((tf.pad(k, [[0, 0], [0, 0], [0, 1], [0, 0]]),
                  tf.pad(v, [[0, 0], [0, 0], [0, 1], [0, 0]]), ck, cv)
                 for k, v, ck, cv in cache)  # a buffer one position wider than the table
    step = tf.function(lambda t, cache, i: m.decode_step(t, cache, i, None)[0],
                       jit_compile=True)
    assert step(tf.fill((1, 1), 5), cache, tf.constant(7)).shape == (1, 1, 99)
    with pytest.raises(ValueError, match="has 9 tokens; " + LIMIT):
        step(tf.fill((1, 1), 5), wide, tf.constant(0))

"""The position limits inside `nnx.jit`: refused on the host from static shapes, before any
gather (XLA would clamp an out-of-range index silently). (The eager forms in every backend:
tests/harness/test_registry.py.)"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from encdec.core import EncoderDecoderConfig, RobertaConfig
from encdec.flax import EncoderDecoderModel

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=10)  # pad 1: positions 2..9
LIMIT = re.escape("the roberta position table serves 8 (max_position_embeddings=10 minus the "
                  "offset 2)")


def model() -> EncoderDecoderModel:
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        RobertaConfig(**TINY), RobertaConfig(**TINY, is_decoder=True, add_cross_attention=True),
        decoder_start_token_id=0, pad_token_id=1)
    return EncoderDecoderModel(config)


def test_encoder_under_nnx_jit():
    with pytest.raises(ValueError, match="input_ids has 9 tokens; " + LIMIT):
        nnx.jit(lambda m, x: m.encoder(input_ids=x).last_hidden_state)(model(), np.full((1, 9), 5))


@pytest.mark.slow  # CI: a decode-step program (the host check it relies on: the test above)
def test_decode_step_under_nnx_jit():
    m = model()
    cache = m.init_cache(m.encoder(input_ids=np.full((1, 4), 5)).last_hidden_state, None, 1,
                         8)  # the edge
    step = nnx.jit(lambda m, c, i: m.decode_step(jnp.full((1, 1), 5), c, i, None)[0])
    assert step(m, cache, jnp.int32(7)).shape == (1, 1, 99)
    big = tuple((jnp.zeros((1, 4, 9, 8)),) * 2 + layer[2:] for layer in cache)
    with pytest.raises(ValueError, match="the decoder cache has 9 tokens; " + LIMIT):
        step(m, big, jnp.int32(0))

"""What only NNX has, around the reference's API (checked in every backend against transformers
in tests/harness/test_migration.py): forward's routed keyword arguments and the configs' output
switches under `nnx.jit`, and the state through `nnx.split` / `nnx.merge` (a pytree; tied
Variables, `tie_encoder_decoder`, stay one Variable)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from encdec.core import BertConfig, EncoderDecoderConfig, GPT2Config
from encdec.flax import BertModel, EncoderDecoderModel, GPT2LMHeadModel
from tests.conftest import COMPOSITES, make_batch, max_diff


# CI: the routed arguments and the output switches in flax, eager, against transformers stay
# fast (tests/harness/test_migration.py); the same under nnx.jit is this test's only
@pytest.mark.slow
def test_routed_kwargs_and_config_switches_under_jit():
    enc_kw, dec_kw, _ = COMPOSITES["bert2gpt2"]
    flags = dict(output_attentions=True, output_hidden_states=True)
    encoder = BertModel(BertConfig(**enc_kw, **flags), rngs=nnx.Rngs(0))
    decoder = GPT2LMHeadModel(GPT2Config(**dec_kw, add_cross_attention=True, **flags),
                              rngs=nnx.Rngs(1))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    b = make_batch()
    src, tgt = b["input_ids"].shape, b["labels"].shape
    extra = dict(token_type_ids=np.ones(src, np.int32),
                 position_ids=np.broadcast_to(np.arange(2, 2 + src[1]), src),
                 decoder_position_ids=np.broadcast_to(np.arange(3, 3 + tgt[1]), tgt))
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"])

    @nnx.jit
    def forward(m, kw, extra):
        return m(**kw, **extra)

    eager, jitted = model(**kw, **extra), forward(model, kw, extra)
    for name in ("logits", "encoder_attentions", "decoder_attentions", "cross_attentions",
                 "encoder_hidden_states", "decoder_hidden_states"):
        assert jitted[name] is not None, name
        assert max_diff(jitted[name], eager[name]) < 1e-5, name
    assert max_diff(model(**kw).logits, eager.logits) > 1e-3  # the routed ids were used
    with pytest.raises(TypeError, match="decoder_token_types"):
        model(**kw, decoder_token_types=extra["token_type_ids"])


def test_split_merge_round_trip_keeps_tied_variables(tmp_path):
    """The state splits and merges as a pytree: one leaf per owned parameter (shared Variables
    are one leaf), the merged model is the same class with the same config and logits, and tied
    Variables (`tie_encoder_decoder`) stay one Variable. (The model rebuilt inside `jax.jit` from
    its flattened arrays: every `generate` call, tests/harness/test_architectures.py.)"""
    enc_kw, dec_kw, _ = COMPOSITES["bert2bert"]
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**enc_kw), BertConfig(**dec_kw, is_decoder=True, add_cross_attention=True),
        tie_encoder_decoder=True)
    EncoderDecoderModel(config=config).save_pretrained(tmp_path)
    model = EncoderDecoderModel.from_pretrained(tmp_path)
    assert len(nnx.to_flat_state(nnx.state(model, nnx.Param))) == len(model.table().owned)
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    assert type(merged) is EncoderDecoderModel and merged.config is model.config
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(nnx.split(merged)[1]))
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"])
    assert max_diff(model(**kw).logits, merged(**kw).logits) == 0.0
    assert merged.decoder.bert.encoder.layer[0].attention.self.query.kernel is \
        merged.encoder.encoder.layer[0].attention.self.query.kernel

"""Issue 14 in what only NNX has (the cross-backend checks against transformers are in
tests/harness/test_migration.py): forward's routed keyword arguments and the configs' output
switches under `nnx.jit`, and a warm start around a given encoder with `tie_encoder_decoder`."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from encdec.core import BertConfig, GPT2Config
from encdec.flax import BertLMHeadModel, BertModel, EncoderDecoderModel, GPT2LMHeadModel
from tests.conftest import COMPOSITES, make_batch

from .conftest import max_diff


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


def test_warm_start_around_given_encoder_ties_to_its_values(tmp_path):
    """With `tie_encoder_decoder`, the decoder's base weights become the given encoder's (its
    values win over the decoder checkpoint's, as the reference's post_init tie)."""
    enc_kw, dec_kw, _ = COMPOSITES["bert2bert"]
    BertLMHeadModel(BertConfig(**dec_kw, is_decoder=True, add_cross_attention=True),
                    rngs=nnx.Rngs(1)).save_pretrained(tmp_path / "dec")
    encoder = BertModel(BertConfig(**enc_kw), rngs=nnx.Rngs(0))
    query = np.asarray(encoder.encoder.layer[0].attention.self.query.kernel[...])
    model, reports = EncoderDecoderModel.from_encoder_decoder_pretrained(
        decoder_pretrained_model_name_or_path=tmp_path / "dec", encoder_model=encoder,
        tie_encoder_decoder=True, output_loading_info=True)
    assert model.encoder is encoder
    assert reports["encoder"].missing == [] and reports["decoder"].missing == []
    tied = model.decoder.bert.encoder.layer[0].attention.self.query.kernel
    assert tied is model.encoder.encoder.layer[0].attention.self.query.kernel
    assert np.array_equal(np.asarray(tied[...]), query)

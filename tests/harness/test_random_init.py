"""A composite built from configs (random init) in every backend: `enc_to_dec_proj` exactly when
the hidden sizes differ, the reference's init std, tied weights held once, a config the
backbones share and a caller may change, a composite around given backbone objects, and the
labels -> decoder_input_ids rule (the core's)."""

from __future__ import annotations

import numpy as np
import pytest

from encdec.core import BertConfig, EncoderDecoderConfig, GPT2Config, seq2seq
from tests.conftest import make_batch

TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                 intermediate_size=37)


# flax in CI: its constructors run in every flax load of the fast subset
@pytest.mark.parametrize("backend", [
    "pt", "tf", pytest.param("flax", marks=pytest.mark.slow)], indirect=True)
def test_random_init_constructors_and_mutable_config(backend):
    cls = backend.module.EncoderDecoderModel
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**TINY_BERT), GPT2Config(vocab_size=99, n_embd=24, n_layer=2, n_head=4))
    model = cls(config=config)
    assert model.enc_to_dec_proj is not None
    table = model.table()
    w = backend.param(model, table.by_name["decoder.transformer.h.0.crossattention.c_attn.weight"])
    assert abs(w.std() - 0.02) < 0.005
    assert backend.n_params(model) == len(table.owned)  # the LM head is wte, held once
    model.config.decoder_start_token_id, model.config.pad_token_id = 2, 0
    b = make_batch()
    x = backend.inputs({"input_ids": b["input_ids"], "labels": b["labels"]})
    assert np.isfinite(np.asarray(backend.forward(model, b)["loss"]))
    np.testing.assert_array_equal(
        np.asarray(model.prepare_decoder_input_ids_from_labels(x["labels"])),
        seq2seq.shift_tokens_right(b["labels"], 0, 2))
    model.config.decoder_start_token_id = None
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model.prepare_decoder_input_ids_from_labels(x["labels"])
    model.config.decoder_start_token_id = 2
    model.config.decoder.use_cache = False  # the backbones share the composite's config
    assert model(**x).past_key_values is None
    again = cls(encoder=model.encoder, decoder=model.decoder)
    assert again.encoder is model.encoder and again.enc_to_dec_proj is not None
    same = cls(config=EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**TINY_BERT), BertConfig(**TINY_BERT)))
    assert same.enc_to_dec_proj is None
    # the BERT head's decoder bias is the head's `bias`, and its matrix the word embeddings
    assert backend.n_params(same) == len(same.table().owned)

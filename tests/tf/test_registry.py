"""The TF backend on the registry: class lookup by family, the reference's class names exported,
model-type checks, ties through the table, and position limits refused in compiled paths."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import encdec.tf as etf
from encdec.core import (
    ConfigError,
    DistilBertConfig,
    EncoderDecoderConfig,
    GPT2Config,
    RobertaConfig,
)
from encdec.core.registry import ARCHITECTURES, FAMILIES, max_positions
from encdec.core.weights import Dialect, leaf
from encdec.tf import params
from encdec.tf.encoder_decoder import FAMILIES as TF_FAMILIES
from encdec.tf.encoder_decoder import decoder_class

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37)


def test_every_family_and_reference_class_is_served():
    assert set(TF_FAMILIES) == set(FAMILIES)
    for arch in ARCHITECTURES:
        base, lm = TF_FAMILIES[arch.family]
        if arch.base_class is not None:  # None: a decoder-only architecture (BART family)
            cls = getattr(etf, arch.base_class)
            assert issubclass(cls, base) and cls.config_class is arch.config_class, arch.name
            assert arch.base_class in etf.__all__
        if arch.lm_class is None:
            assert lm is None
            continue
        cls = getattr(etf, arch.lm_class)
        assert issubclass(cls, lm) and cls.config_class is arch.config_class, arch.name
        assert arch.lm_class in etf.__all__


def test_distilbert_decoder_is_a_clear_error():
    with pytest.raises(ConfigError, match="distilbert cannot be a decoder"):
        decoder_class(DistilBertConfig(is_decoder=True, add_cross_attention=True))


def test_from_pretrained_refuses_another_model_type(tmp_path):
    model = etf.RobertaModel(RobertaConfig(**TINY, max_position_embeddings=20))
    model.save_pretrained(tmp_path / "roberta")
    assert isinstance(etf.RobertaModel.from_pretrained(tmp_path / "roberta"), etf.RobertaModel)
    for cls in (etf.BertModel, etf.XLMRobertaModel):
        with pytest.raises(ConfigError, match="model_type 'roberta' is not|"
                                              "a 'roberta' checkpoint; BertModel .* RobertaModel"):
            cls.from_pretrained(tmp_path / "roberta")


def test_gpt2_options_refused_as_in_pt_and_flax():
    for option in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        with pytest.raises(NotImplementedError, match=option):
            etf.GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4,
                                     **{option: True}))


def test_ties_through_the_table_share_one_variable():
    c = RobertaConfig(**TINY, max_position_embeddings=20, is_decoder=True,
                      add_cross_attention=True)
    lm = etf.RobertaForCausalLM(c)
    found = params.variables(lm)
    assert found["lm_head.decoder.bias"] is found["lm_head.bias"]
    assert lm.lm_head.decoder.kernel is None  # the word embeddings (transposed layout)
    table = lm.table()
    owned = {leaf(p, Dialect.KERAS) for p in table.owned}
    assert set(found) - owned == {"lm_head.decoder.bias"} and owned <= set(found)
    assert len({id(v) for v in lm.trainable_variables}) == len(table.owned)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        RobertaConfig(**TINY, max_position_embeddings=20), c, tie_encoder_decoder=True)
    model = etf.EncoderDecoderModel(config=config)
    assert len({id(v) for v in model.trainable_variables}) == len(model.table().owned)


def _roberta(**kw) -> RobertaConfig:
    return RobertaConfig(**TINY, max_position_embeddings=10, **kw)  # pad 1: positions 2..9


def test_roberta_position_limit_edge_and_error():
    c = _roberta()
    assert max_positions(c) == 8  # max_position_embeddings - padding_idx - 1
    model = etf.RobertaModel(c)
    model(input_ids=np.full((1, 8), 5))  # exactly the table
    msg = (r"input_ids has 9 tokens; the roberta position table serves 8 "
           r"\(max_position_embeddings=10 minus the offset 2\)")
    with pytest.raises(ValueError, match=msg):
        model(input_ids=np.full((1, 9), 5))
    compiled = tf.function(lambda ids: model(input_ids=ids).last_hidden_state, jit_compile=True)
    compiled(tf.fill((1, 8), 5))
    with pytest.raises(ValueError, match=msg):
        compiled(tf.fill((1, 9), 5))


def test_position_limit_in_decode_step_and_generate():
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        _roberta(), _roberta(is_decoder=True, add_cross_attention=True),
        decoder_start_token_id=0, pad_token_id=1)
    model = etf.EncoderDecoderModel(config=config)
    ids = np.full((1, 5), 5)
    enc = model.encoder(input_ids=ids).last_hidden_state
    with pytest.raises(ValueError, match=r"the decoding cache \(max_length\) has 9 tokens"):
        model.init_cache(enc, None, 1, 9)
    cache = model.init_cache(enc, None, 1, 8)  # exactly the table
    with pytest.raises(ValueError, match="input_ids has 2 tokens after 7 cached ones"):
        model.decode_step(tf.fill((1, 2), 5), cache, 7, None)
    model.decode_step(tf.fill((1, 1), 5), cache, 7, None)
    wide = tuple((tf.pad(k, [[0, 0], [0, 0], [0, 1], [0, 0]]),
                  tf.pad(v, [[0, 0], [0, 0], [0, 1], [0, 0]]), ck, cv)
                 for k, v, ck, cv in cache)  # a buffer one position wider than the table
    step = tf.function(lambda t, cache, i: model.decode_step(t, cache, i, None)[0],
                       jit_compile=True)
    step(tf.fill((1, 1), 5), cache, tf.constant(0))
    with pytest.raises(ValueError, match="has 9 tokens; the roberta position table serves 8"):
        step(tf.fill((1, 1), 5), wide, tf.constant(0))
    with pytest.raises(ValueError, match="decoder_input_ids has 9 tokens"):
        model(input_ids=ids, decoder_input_ids=np.full((1, 9), 5))
    out = model.generate(np.full((1, 8), 5), max_new_tokens=7)  # the table, on both sides
    assert out.shape[1] <= 8
    with pytest.raises(ValueError, match="input_ids has 9 tokens"):
        model.generate(np.full((1, 9), 5), max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds the decoder's position table"):
        model.generate(ids, max_new_tokens=8)

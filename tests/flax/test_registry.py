"""What only the Flax backend has to show for the registry: its `FAMILIES` and the reference's
class names made from `ARCHITECTURES`, init from the registry's rules, one tying mechanism,
and the position limits refused on the host in eager and `nnx.jit` paths alike."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import encdec.flax
from encdec.core import (
    BertConfig,
    DistilBertConfig,
    EncoderDecoderConfig,
    GPT2Config,
    RobertaConfig,
)
from encdec.core.config import ConfigError
from encdec.core.registry import ARCHITECTURES, max_positions, sinusoidal_table
from encdec.flax import EncoderDecoderModel
from encdec.flax.encoder_decoder import FAMILIES, decoder_class

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
DEC = dict(is_decoder=True, add_cross_attention=True)


def test_families_and_reference_class_names():
    assert set(FAMILIES) == {a.family for a in ARCHITECTURES}
    for arch in ARCHITECTURES:
        base, lm = FAMILIES[arch.family]
        for name, family_class in ((arch.base_class, base), (arch.lm_class, lm)):
            if name is None:  # no reference class: no causal LM (DistilBERT), or the base of
                # a decoder-only family (BartDecoder, served as `model.decoder` only)
                assert family_class is None or not arch.can_encode
                continue
            cls = getattr(encdec.flax, name)
            assert name in encdec.flax.__all__ and cls.__name__ == name
            assert issubclass(cls, family_class) and cls.config_class is arch.config_class


def test_encoder_only_architecture_as_decoder_is_a_clear_error():
    with pytest.raises(ConfigError, match="distilbert cannot be a decoder"):
        decoder_class(DistilBertConfig(**DEC))


def test_from_pretrained_refuses_another_model_type(tmp_path):
    encdec.flax.RobertaModel(RobertaConfig(**TINY)).save_pretrained(tmp_path / "r")
    with pytest.raises(ConfigError, match="model_type 'roberta'.*RobertaModel"):
        encdec.flax.BertModel.from_pretrained(tmp_path / "r")
    with pytest.raises(ConfigError, match="model_type 'roberta'"):
        encdec.flax.XLMRobertaModel.from_pretrained(tmp_path / "r")
    assert type(encdec.flax.RobertaModel.from_pretrained(tmp_path / "r")).__name__ == \
        "RobertaModel"


def test_init_follows_the_registry_rules():
    rob = encdec.flax.RobertaModel(RobertaConfig(**TINY))
    pad = rob.config.pad_token_id
    for table in (rob.embeddings.word_embeddings, rob.embeddings.position_embeddings):
        e = np.asarray(table.embedding[...])
        assert not e[pad].any() and 0.01 < e[pad + 1:].std() < 0.03
    dist = encdec.flax.DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=2,
                                                        n_heads=4, hidden_dim=37,
                                                        sinusoidal_pos_embds=True))
    np.testing.assert_array_equal(dist.embeddings.position_embeddings.embedding[...],
                                  sinusoidal_table(512, 32))
    gpt = encdec.flax.GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=8, n_head=4))
    fc, proj = (np.asarray(m.kernel[...]).std() for m in (gpt.h[0].mlp.c_fc, gpt.h[0].mlp.c_proj))
    assert proj < 0.5 * fc  # residual projections: std / sqrt(2 * n_layer) = std / 4


def test_one_tying_mechanism():
    """Heads and `tie_encoder_decoder` share Variables: the state has the owned params only."""
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        RobertaConfig(**TINY), RobertaConfig(**TINY, **DEC), tie_encoder_decoder=True)
    model = EncoderDecoderModel(config)
    emb = model.encoder.embeddings.word_embeddings.embedding
    assert model.decoder.roberta.embeddings.word_embeddings.embedding is emb
    assert model.decoder.lm_head.decoder.kernel is None  # tied across layouts: read at call time
    assert model.decoder.lm_head.decoder.bias is model.decoder.lm_head.bias
    paths = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert len(paths) == len(model.table().owned)
    assert "decoder.lm_head.bias" in paths and "decoder.lm_head.decoder.bias" not in paths


def _roberta2roberta() -> EncoderDecoderModel:
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        RobertaConfig(**TINY), RobertaConfig(**TINY, **DEC), decoder_start_token_id=0,
        pad_token_id=1)
    return EncoderDecoderModel(config)


LIMIT = re.escape("the roberta position table serves 62 (max_position_embeddings=64 minus the "
                  "offset 2)")


def test_position_limit_edges_eager_and_compiled():
    model = _roberta2roberta()
    assert max_positions(model.config.encoder) == 62
    ids = np.full((1, 62), 5)
    assert model.encoder(input_ids=ids).last_hidden_state.shape == (1, 62, 32)  # the edge
    over = np.full((1, 63), 5)
    with pytest.raises(ValueError, match="input_ids has 63 tokens; " + LIMIT):
        model.encoder(input_ids=over)
    with pytest.raises(ValueError, match="input_ids has 63 tokens; " + LIMIT):
        nnx.jit(lambda m, x: m.encoder(input_ids=x).last_hidden_state)(model, over)
    with pytest.raises(ValueError, match="input_ids has 63 tokens; " + LIMIT):
        model(input_ids=ids, decoder_input_ids=over)
    with pytest.raises(ValueError, match="inputs_embeds has 63 tokens"):
        model.encoder(inputs_embeds=jnp.zeros((1, 63, 32)))


def test_position_limit_in_decode_step_and_generate():
    model = _roberta2roberta()
    enc = model.encoder(input_ids=np.full((1, 4), 5)).last_hidden_state
    cache = model.init_cache(enc, None, 1, 62)  # the edge
    logits, _ = nnx.jit(lambda m, c, i: m.decode_step(jnp.full((1, 1), 5), c, i, None))(
        model, cache, jnp.int32(61))
    assert logits.shape == (1, 1, 99)
    with pytest.raises(ValueError, match=r"the decoding cache \(max_length\) has 63 tokens"):
        model.init_cache(enc, None, 1, 63)
    big = tuple((jnp.zeros((1, 4, 63, 8)),) * 2 + layer[2:] for layer in cache)
    with pytest.raises(ValueError, match="the decoder cache has 63 tokens; " + LIMIT):
        nnx.jit(lambda m, c: m.decode_step(jnp.full((1, 1), 5), c, jnp.int32(0), None))(
            model, big)
    with pytest.raises(ValueError, match="input_ids has 2 tokens after 61 cached ones"):
        model.decode_step(jnp.full((1, 2), 5), cache, 61, None)
    out = model.generate(np.full((1, 62), 5), max_length=62)  # both edges
    assert out.shape[1] <= 62
    with pytest.raises(ValueError, match="input_ids has 63 tokens; " + LIMIT):
        model.generate(np.full((1, 63), 5), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_length=63"):
        model.generate(np.full((1, 4), 5), max_length=63)


def test_bert_limit_has_no_offset():
    model = encdec.flax.BertModel(BertConfig(**TINY))
    with pytest.raises(ValueError, match=re.escape("input_ids has 65 tokens; the bert position "
                                                   "table serves 64 (max_position_embeddings=64)")):
        model(input_ids=np.zeros((1, 65), np.int32))

"""The weight table against the reference's state dicts: names, shapes, tied and ignored keys."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core import BertConfig, EncoderDecoderConfig, GPT2Config
from encdec.core.registry import decoder_table, encoder_decoder_table, encoder_table
from encdec.core.weights import (
    Dialect,
    export_state,
    from_dialect,
    leaf,
    load_state,
    match_keys,
    to_dialect,
)
from tests.conftest import PAIRS


@pytest.mark.parametrize("name", list(PAIRS))
def test_against_hf_composite_state_dict(reference_dir, name):
    import transformers as tr

    from tests.conftest import build_reference

    config = EncoderDecoderConfig.from_pretrained(reference_dir(name))
    table = encoder_decoder_table(config)
    ref = build_reference(name).state_dict()
    # every reference parameter is in the table with its shape; the table's owned params are
    # exactly what transformers saves (tied weights stored once)
    assert {n: tuple(t.shape) for n, t in ref.items() if n in table.by_name} == {
        n: table.by_name[n].shape for n in ref if n in table.by_name}
    assert set(ref) - set(table.by_name) == set()
    saved = load_file(reference_dir(name) / "model.safetensors")
    assert {p.name for p in table.saved} == set(saved)
    assert ("enc_to_dec_proj.weight" in table.by_name) == name.endswith("_proj")
    del tr


def test_against_hf_backbone_tables():
    import torch
    import transformers as tr

    torch.manual_seed(0)
    small = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=20, max_position_embeddings=32)
    cases = [
        (tr.BertModel(tr.BertConfig(**small)), encoder_table(BertConfig(**small))),
        (tr.BertLMHeadModel(tr.BertConfig(**small, is_decoder=True, add_cross_attention=True)),
         decoder_table(BertConfig(**small, is_decoder=True, add_cross_attention=True))),
        (tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2,
                                          add_cross_attention=True)),
         decoder_table(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2,
                                  add_cross_attention=True, is_decoder=True))),
    ]
    for model, table in cases:
        sd = model.state_dict()
        m = match_keys(table, sd)
        assert not m.unexpected and not m.missing, (m.unexpected, m.missing)
        for name, key in m.keys.items():
            assert tuple(sd[key].shape) == table.by_name[name].shape, name


def test_quirks_prefixes_legacy_names_buffers_heads():
    c = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=20, is_decoder=True, add_cross_attention=True)
    head = decoder_table(c)
    base_keys = ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.gamma",
                 "embeddings.LayerNorm.beta", "embeddings.position_ids", "pooler.dense.weight"]
    m = match_keys(head, base_keys)  # base checkpoint into a head model: prefix added
    assert m.keys["bert.embeddings.LayerNorm.weight"] == "embeddings.LayerNorm.gamma"
    assert m.keys["bert.embeddings.LayerNorm.bias"] == "embeddings.LayerNorm.beta"
    assert "embeddings.position_ids" in m.ignored and "pooler.dense.weight" in m.ignored
    assert "cls.predictions.bias" in m.missing and not m.unexpected
    assert "bert.encoder.layer.0.crossattention.self.query.weight" in m.missing
    # a head checkpoint into a base model: prefix stripped, heads dropped and reported
    base = encoder_table(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=20))
    m = match_keys(base, ["bert.embeddings.word_embeddings.weight", "cls.predictions.bias",
                          "cls.seq_relationship.weight", "something.else"])
    assert m.keys == {"embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight"}
    assert m.dropped == ["cls.predictions.bias", "cls.seq_relationship.weight"]
    assert m.unexpected == ["something.else"]
    g = decoder_table(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                 add_cross_attention=True, is_decoder=True))
    m = match_keys(g, ["h.0.attn.bias", "h.0.attn.masked_bias", "wte.weight", "lm_head.weight"])
    assert m.keys == {"transformer.wte.weight": "wte.weight"}
    assert sorted(m.ignored) == ["h.0.attn.bias", "h.0.attn.masked_bias", "lm_head.weight"]


def test_dialect_leaves_and_layouts():
    c = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1),
        GPT2Config(n_embd=8, n_head=2, n_layer=1))
    t = encoder_decoder_table(c)
    q = t.by_name["encoder.encoder.layer.0.attention.self.query.weight"]
    assert leaf(q, Dialect.PT) == q.name
    assert leaf(q, Dialect.KERAS) == "encoder.encoder.layer.0.attention.self.query.kernel"
    ln = t.by_name["encoder.embeddings.LayerNorm.bias"]
    assert (leaf(ln, Dialect.KERAS), leaf(ln, Dialect.NNX)) == (
        "encoder.embeddings.LayerNorm.beta", "encoder.embeddings.LayerNorm.bias")
    emb = t.by_name["decoder.transformer.wte.weight"]
    assert leaf(emb, Dialect.NNX).endswith("wte.embedding")
    a = np.arange(6.0).reshape(2, 3)
    conv = t.by_name["decoder.transformer.h.0.attn.c_attn.weight"]
    assert to_dialect(conv, a, Dialect.NNX) is a  # Conv1D is already (in, out)
    assert np.array_equal(from_dialect(q, to_dialect(q, a, Dialect.KERAS), Dialect.KERAS), a)
    assert t.by_name["enc_to_dec_proj.weight"].shape == (8, 16)


def test_load_and_export_round_trip(reference_dir):
    """Keras dialect in and out: the same keys and bits (errors: tests/harness/test_errors.py)."""
    config = EncoderDecoderConfig.from_pretrained(reference_dir("bert2gpt2"))
    table = encoder_decoder_table(config)
    state = load_file(reference_dir("bert2gpt2") / "model.safetensors")
    store = {}
    load_state(table, state, Dialect.KERAS, store.__setitem__)
    out = dict(export_state(table, store.__getitem__, Dialect.KERAS))
    assert out.keys() == state.keys()
    assert all(np.array_equal(out[k], state[k]) for k in state)


def test_tie_encoder_decoder_shares_decoder_base():
    c = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1),
        BertConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1))
    c.tie_encoder_decoder = True
    t = encoder_decoder_table(c)
    p = t.by_name["decoder.bert.encoder.layer.0.attention.self.query.weight"]
    assert p.tied_to == "encoder.encoder.layer.0.attention.self.query.weight"
    cross = t.by_name["decoder.bert.encoder.layer.0.crossattention.self.query.weight"]
    assert cross.tied_to is None
    # the reference (transformers 5) writes the decoder's copies out in full: so do we
    assert p in t.saved and p not in t.owned
    store = {}
    load_state(t, {n.name: np.full(n.shape, i, np.float32) for i, n in enumerate(t.owned)},
               Dialect.NNX, store.__setitem__)
    out = dict(export_state(t, store.__getitem__, Dialect.NNX))
    assert np.array_equal(out[p.name], out[p.tied_to])
    assert "decoder.cls.predictions.decoder.weight" not in out

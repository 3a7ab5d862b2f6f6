"""Configs: the reference's config.json round-trips with every key; bad values name the field."""

import json

import pytest

from encdec.core import BertConfig, ConfigError, EncoderDecoderConfig, GenerationConfig, GPT2Config
from encdec.core.config import config_from_dict


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


@pytest.mark.parametrize("kwargs, field", [
    (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(hidden_act="swishy"), "hidden_act"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BertConfig.from_dict(kwargs)


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        EncoderDecoderConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ConfigError, match="unknown model_type 't5'"):
        EncoderDecoderConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="decoder.*add_cross_attention"):
        EncoderDecoderConfig(encoder=BertConfig(), decoder=BertConfig())
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

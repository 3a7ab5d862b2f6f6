"""Loader keyword arguments, checked in core before any file is read: config fields and the
documented loader options are taken, anything else is the reference's TypeError naming it
(never stored in the config's `extra` and written to config.json); the reference's
loader-only arguments (`from_pt`, ...) are refused with the reason."""

from __future__ import annotations

import pytest

from encdec.core import BertConfig, EncoderDecoderConfig
from encdec.core.modeling import config_keys, read_backbone_config, read_pretrained
from encdec.core.warm_start import warm_start, warm_start_keys


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader-kwargs")
    small = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=10)
    BertConfig(**small).save_pretrained(root / "bert")
    EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**small), BertConfig(**small)).save_pretrained(root / "composite")
    return root


@pytest.mark.parametrize("key", ["from_pt", "from_tf", "from_flax"])
def test_loader_only_arguments_refused_by_name(dirs, key):
    with pytest.raises(TypeError, match=f"{key}= is not an encdec argument"):
        read_pretrained(dirs / "composite", **{key: True})
    with pytest.raises(TypeError, match=f"{key}= is not an encdec argument"):
        read_backbone_config(dirs / "bert", **{key: True})
    with pytest.raises(TypeError, match=f"decoder_{key}= is not an encdec argument"):
        warm_start(None, dirs / "bert", dirs / "bert", **{f"decoder_{key}": True})


def test_unknown_keyword_refused_before_reading(tmp_path):
    missing = tmp_path / "nowhere"  # the TypeError comes before any file is read
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'num_beam'"):
        read_pretrained(missing, num_beam=4)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'quantize'"):
        read_backbone_config(missing, quantize="int8")
    for key in ("encoder_num_beam", "decoder_quantize", "num_beams"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{key}'"):
            warm_start(None, missing, missing, **{key: 1})


def test_field_of_another_class_refused_once_config_is_read(dirs):
    """`n_embd` is a GPT-2 field: it passes the check made before reading, and is refused
    once the checkpoint's config.json says the model is a BERT (before any weight)."""
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'n_embd'"):
        read_backbone_config(dirs / "bert", n_embd=16)


def test_known_fields_applied(dirs):
    assert read_backbone_config(dirs / "bert", hidden_dropout_prob=0.0)[1].hidden_dropout_prob == 0
    pre = read_pretrained(dirs / "composite", decoder_start_token_id=2, tie_encoder_decoder=True)
    assert pre.config.decoder_start_token_id == 2 and pre.config.tie_encoder_decoder
    assert "num_beam" not in pre.config.to_dict()
    given = EncoderDecoderConfig.from_pretrained(dirs / "composite")
    pre = read_pretrained(dirs / "composite", config=given, pad_token_id=1)
    assert pre.config.pad_token_id == 1
    assert given.pad_token_id is None  # the given config is not changed


def test_accepted_sets():
    keys = warm_start_keys()
    for key in ("encoder_hidden_dropout_prob", "decoder_n_embd", "decoder_start_token_id",
                "pad_token_id", "tie_encoder_decoder", "eos_token_id", "dtype", "encoder_dtype",
                "decoder_torch_dtype", "output_loading_info", "encoder_model"):
        assert key in keys, key
    for key in ("encoder", "decoder", "num_beams", "encoder_num_beams", "extra"):
        assert key not in keys, key
    assert "output_hidden_states" in config_keys(BertConfig)
    assert "extra" not in config_keys(BertConfig)


def test_side_field_in_composite_load_says_where_it_goes(tmp_path):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'hidden_dropout_prob': "
                                        r"a field of the encoder's or decoder's config"):
        read_pretrained(tmp_path / "nowhere", hidden_dropout_prob=0.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'output_loading_info'"):
        read_pretrained(tmp_path / "nowhere", output_loading_info=True)  # the caller's option

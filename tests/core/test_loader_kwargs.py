"""The reference's loader-only arguments (`from_pt`, …) are refused by name, never
stored in the config as unknown keys that do nothing."""

from __future__ import annotations

import pytest

from encdec.core import BertConfig, EncoderDecoderConfig
from encdec.core.modeling import prepare_warm_start, read_backbone_config, read_pretrained


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
        prepare_warm_start(dirs / "bert", dirs / "bert", **{f"decoder_{key}": True})
    # a real config override still works
    assert read_backbone_config(dirs / "bert", hidden_dropout_prob=0.0)[1].hidden_dropout_prob == 0

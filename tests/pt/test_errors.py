"""Bad input: every failure names the file, key or field; a failed save leaves nothing behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from encdec.core import BertConfig, CheckpointError, ConfigError, GPT2Config
from encdec.pt import BertLMHeadModel, BertModel, EncoderDecoderModel, GPT2Model

KEY = "decoder.bert.encoder.layer.0.crossattention.self.query.weight"


@pytest.fixture
def ckpt(reference_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(reference_dir("bert2bert"), d)
    return d


def _edit(d, fn):
    state = load_file(d / "model.safetensors")
    fn(state)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_missing_weight_names_file_and_key(ckpt):
    _edit(ckpt, lambda s: s.pop(KEY))
    with pytest.raises(CheckpointError, match=f"{ckpt}.*missing.*{KEY}"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_unexpected_key_names_it(ckpt):
    _edit(ckpt, lambda s: s.update({"decoder.bert.mystery.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="unexpected.*decoder.bert.mystery.weight"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_wrong_shape_names_key_and_shapes(ckpt):
    _edit(ckpt, lambda s: s.update({KEY: np.zeros((32, 31), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"{KEY}.*\(32, 31\).*\(32, 32\)"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_truncated_safetensors_names_file(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_unknown_model_type_names_file_and_value(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["decoder"]["model_type"] = "t5"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="decoder.*unknown model_type 't5'"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_config_not_json_names_file(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_decoder_without_cross_attention(ckpt):
    tiny = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=37)
    decoder = BertLMHeadModel(BertConfig(**tiny, is_decoder=True))
    with pytest.raises(ValueError, match="add_cross_attention"):
        EncoderDecoderModel(encoder=BertModel(BertConfig(**tiny)), decoder=decoder)
    config = json.loads((ckpt / "config.json").read_text())
    config["decoder"]["add_cross_attention"] = False
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="decoder.*add_cross_attention"):
        EncoderDecoderModel.from_pretrained(ckpt)


def test_wrong_architecture_for_backbone(reference_dir, tmp_path):
    gpt2 = GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4, n_positions=16))
    gpt2.save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="config.json.*'gpt2' is not a BertConfig"):
        BertModel.from_pretrained(tmp_path / "g")


def test_unsupported_gpt2_option_names_field():
    with pytest.raises(NotImplementedError, match="scale_attn_by_inverse_layer_idx"):
        GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4,
                             scale_attn_by_inverse_layer_idx=True))


def test_failed_save_leaves_nothing_behind(reference_dir, tmp_path, monkeypatch):
    import encdec.core.checkpoint as checkpoint

    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    calls = []

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "out", max_shard_size="20KB")
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []

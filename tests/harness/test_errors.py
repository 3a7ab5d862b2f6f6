"""Bad checkpoints and bad configs in every backend: each failure names the file, key or field;
a failed save leaves nothing behind. (Bad inputs to a forward or `generate`:
tests/test_bad_inputs.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from encdec.core import BertConfig, CheckpointError, ConfigError, GPT2Config
from tests.generation import oracle
from tests.harness.backends import ADAPTERS

KEY = "decoder.bert.encoder.layer.0.crossattention.self.query.weight"
TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                 intermediate_size=37)
TINY_GPT2 = dict(vocab_size=99, n_embd=32, n_layer=1, n_head=4, n_positions=16)


def _weights(fn):
    def edit(d):
        state = load_file(d / "model.safetensors")
        fn(state)
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    return edit


def _config(fn):
    def edit(d):
        config = json.loads((d / "config.json").read_text())
        fn(config)
        (d / "config.json").write_text(json.dumps(config))
    return edit


def _truncate(d):
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


# name -> (an edit of a bert2bert checkpoint, the error, a regex its message matches; {d}: the
# checkpoint's directory)
CORRUPT = {
    "missing_weight": (_weights(lambda s: s.pop(KEY)), CheckpointError, f"{{d}}.*missing.*{KEY}"),
    "unexpected_key": (_weights(lambda s: s.update(
        {"decoder.bert.mystery.weight": np.zeros(3, np.float32)})),
        CheckpointError, "unexpected.*decoder.bert.mystery.weight"),
    "wrong_shape": (_weights(lambda s: s.update({KEY: np.zeros((32, 31), np.float32)})),
                    CheckpointError, rf"{KEY}.*\(32, 31\).*\(32, 32\)"),
    "truncated": (_truncate, CheckpointError, "model.safetensors.*truncated"),
    "unknown_model_type": (_config(lambda c: c["decoder"].update(model_type="t5")),
                           ConfigError, "decoder.*unknown model_type 't5'"),
    "config_not_json": (lambda d: (d / "config.json").write_text("{not json"),
                        CheckpointError, "config.json is not valid JSON"),
    "no_cross_attention": (_config(lambda c: c["decoder"].update(add_cross_attention=False)),
                           ConfigError, "decoder.*add_cross_attention"),
}


def backends(*slow: str) -> list:
    """Every backend for the `backend` fixture, those in `slow` declared slow."""
    return [pytest.param(b, marks=pytest.mark.slow) if b in slow else b for b in ADAPTERS]


# tf and flax: CI (the reading and its checks are the core's, the same in every backend: pt
# stays fast)
@pytest.mark.parametrize("backend", backends("tf", "flax"), indirect=True)
@pytest.mark.parametrize("case", list(CORRUPT))
def test_bad_checkpoint_names_file_key_or_field(backend, case, tmp_path):
    edit, error, message = CORRUPT[case]
    d = tmp_path / "ckpt"
    shutil.copytree(oracle.checkpoint("bert2bert"), d)
    edit(d)
    with pytest.raises(error, match=message.format(d=d)):
        backend.load(d)


@pytest.mark.parametrize("backend", backends("tf", "flax"), indirect=True)  # as above
def test_bad_backbones_name_the_field(backend, tmp_path):
    """A decoder object without cross-attention; a backbone checkpoint of another
    architecture; a GPT-2 option the library does not implement."""
    m = backend.module
    decoder = m.BertLMHeadModel(BertConfig(**TINY_BERT, is_decoder=True))
    with pytest.raises(ValueError, match="add_cross_attention"):
        m.EncoderDecoderModel(encoder=m.BertModel(BertConfig(**TINY_BERT)), decoder=decoder)
    m.GPT2Model(GPT2Config(**TINY_GPT2)).save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="config.json.*'gpt2' is not a BertConfig"):
        m.BertModel.from_pretrained(tmp_path / "g")
    with pytest.raises(NotImplementedError, match="scale_attn_by_inverse_layer_idx"):
        m.GPT2Model(GPT2Config(**TINY_GPT2, scale_attn_by_inverse_layer_idx=True))


def test_failed_save_leaves_nothing_behind(backend, ours, tmp_path, monkeypatch):
    import encdec.core.checkpoint as checkpoint

    calls, save = [], checkpoint.save_file

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        save(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        ours("bert2bert", backend.name).save_pretrained(tmp_path / "out", max_shard_size="20KB")
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []

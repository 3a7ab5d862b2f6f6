"""EncoderDecoderModel API details: tie_encoder_decoder, generation_config, sharded saves,
config overrides, errors for labels without ids."""

from __future__ import annotations

import numpy as np
import pytest

from encdec.tf import EncoderDecoderModel, params
from tests.conftest import make_batch

from .conftest import max_diff, to_torch


def test_against_hf_tie_encoder_decoder(tmp_path, hf_model):
    """`tie_encoder_decoder`: the decoder's base weights are the encoder's variables
    (transformers 4's behaviour; transformers 5.24 keeps the flag but no longer ties, so the
    reference model is built here with equal weights on both sides and compared on them)."""
    import torch
    import transformers as tr

    from tests.conftest import COMPOSITES

    enc_kw, dec_kw, _ = COMPOSITES["bert2bert"]
    config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(
        tr.BertConfig(**enc_kw), tr.BertConfig(**dec_kw), tie_encoder_decoder=True)
    config.decoder_start_token_id, config.pad_token_id = 2, 0
    torch.manual_seed(0)
    ref = tr.EncoderDecoderModel(config=config).eval()
    dec_state = ref.decoder.bert.state_dict()
    with torch.no_grad():
        for n, p in ref.encoder.state_dict().items():
            if n in dec_state:
                dec_state[n].copy_(p)
    ref.save_pretrained(tmp_path / "ref")
    ours = EncoderDecoderModel.from_pretrained(tmp_path / "ref")
    assert ours.config.tie_encoder_decoder
    v = params.variables(ours)
    q = "encoder.layer.0.attention.self.query.kernel"
    assert v["decoder.bert." + q] is v["encoder." + q]
    e = "embeddings.word_embeddings.embeddings"
    assert v["decoder.bert." + e] is v["encoder." + e]
    assert v["decoder.bert." + q.replace(".attention.", ".crossattention.")] is not \
        v["decoder.bert." + q]
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    with torch.no_grad():
        r = ref(**to_torch(kw))
    assert max_diff(r.logits, ours(**kw).logits) < 1e-5
    ours.save_pretrained(tmp_path / "ours")
    again = EncoderDecoderModel.from_pretrained(tmp_path / "ours")
    assert max_diff(again(**kw).logits, ours(**kw).logits) == 0.0


def test_generation_config_from_file_or_model_config(reference_dir, tmp_path):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    assert model.generation_config.decoder_start_token_id == 2  # from the model config
    assert model.generation_config.pad_token_id == 0
    model.generation_config.max_length = 33
    model.save_pretrained(tmp_path / "m")
    again = EncoderDecoderModel.from_pretrained(tmp_path / "m")
    assert again.generation_config.max_length == 33


def test_sharded_save_round_trip(reference_dir, tmp_path):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2_proj"))
    model.save_pretrained(tmp_path / "s", max_shard_size="10KB")
    assert (tmp_path / "s" / "model.safetensors.index.json").exists()
    again = EncoderDecoderModel.from_pretrained(tmp_path / "s")
    a, b = params.variables(model), params.variables(again)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


def test_config_overrides(reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"),
                                                decoder_start_token_id=7)
    assert model.config.decoder_start_token_id == 7


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2"])
def test_labels_need_ids(name, reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    model.config.decoder_start_token_id = None
    b = make_batch()
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model(input_ids=b["input_ids"], labels=b["labels"])

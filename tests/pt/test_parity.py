"""encdec.pt vs transformers at bert-base sizes (the tiny pairs' parity in every backend:
tests/harness/test_architectures.py)."""

from __future__ import annotations

import pytest
import torch

from encdec.pt import EncoderDecoderModel
from tests.conftest import make_batch, max_diff, to_torch

TOL = 1e-5


@pytest.mark.slow  # two bert-base-sized models (~250M parameters)
def test_against_hf_bert_base_dimensions(tmp_path, hf_model):
    """bert-base sizes (hidden 768, 12 heads, 12 layers, vocab 30522), built by transformers."""
    import transformers as tr

    enc = tr.BertConfig()
    dec = tr.BertConfig(is_decoder=True, add_cross_attention=True)
    config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id = 101, 0
    torch.manual_seed(0)
    tr.EncoderDecoderModel(config=config).save_pretrained(tmp_path / "ref")
    ref, ours = hf_model(tmp_path / "ref"), EncoderDecoderModel.from_pretrained(tmp_path / "ref")
    b = to_torch(make_batch(vocab=30522, batch=2, src_len=16, tgt_len=8))
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    with torch.no_grad():
        r, o = ref(**kw), ours(**kw)
    assert max_diff(r.logits, o.logits) < TOL
    assert abs(r.loss.item() - o.loss.item()) < TOL

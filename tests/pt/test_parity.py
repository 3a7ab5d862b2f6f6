"""encdec.pt vs transformers' EncoderDecoderModel: logits, loss, hidden states, attentions,
checkpoints in both directions (DESIGN.md bound: 1e-5 in fp32)."""

from __future__ import annotations

import pytest
import torch

from encdec.pt import EncoderDecoderModel
from tests.conftest import COMPOSITES, make_batch

from .conftest import max_diff, to_torch

TOL = 1e-5
NAMES = sorted(COMPOSITES)


@pytest.mark.parametrize("name", NAMES)
def test_against_hf_outputs_with_decoder_mask(name, reference_dir, hf_model):
    """decoder_attention_mask, output_hidden_states and output_attentions (eager reference)."""
    d = reference_dir(name, seed=1)
    ref, ours = hf_model(d, attn="eager"), EncoderDecoderModel.from_pretrained(d)
    b = to_torch(make_batch(seed=1))
    dmask = torch.ones_like(b["decoder_input_ids"])
    dmask[0, -2:] = 0
    dmask[2, 4:] = 0
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"], decoder_attention_mask=dmask,
              labels=b["labels"], output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        r, o = ref(**kw), ours(**kw)
    assert abs(r.loss.item() - o.loss.item()) < TOL
    for field in ("logits", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
                  "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions"):
        assert max_diff(r[field], o[field]) < TOL, field
    # return_dict=False: the reference's tuple order
    with torch.no_grad():
        rt, ot = ref(**kw, return_dict=False), ours(**kw, return_dict=False)
    assert len(rt) == len(ot)
    for x, y in zip(rt, ot, strict=True):
        if isinstance(x, torch.Tensor):
            assert max_diff(x, y) < TOL
        elif isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
            assert max_diff(x, y) < TOL


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2"])
def test_against_hf_fully_masked_rows(name, reference_dir, hf_model):
    """Left padding at decoder position 0 and an all-padding source row: a query with no
    visible key gives what the reference's default (SDPA) attention gives."""
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)
    b = to_torch(make_batch())
    mask = b["attention_mask"].clone()
    mask[1] = 0
    dmask = torch.ones_like(b["decoder_input_ids"])
    dmask[0, :2] = 0
    kw = dict(input_ids=b["input_ids"], attention_mask=mask,
              decoder_input_ids=b["decoder_input_ids"], decoder_attention_mask=dmask)
    with torch.no_grad():
        assert max_diff(ref(**kw).logits, ours(**kw).logits) < TOL


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
def test_against_hf_embeds_and_encoder_outputs(name, reference_dir, hf_model):
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)
    b = to_torch(make_batch())
    with torch.no_grad():
        emb = ref.encoder.get_input_embeddings()(b["input_ids"])
        demb = ref.decoder.get_input_embeddings()(b["decoder_input_ids"])
        kw = dict(inputs_embeds=emb, attention_mask=b["attention_mask"],
                  decoder_inputs_embeds=demb)
        r, o = ref(**kw), ours(**kw)
        assert max_diff(r.logits, o.logits) < TOL
        enc = (r.encoder_last_hidden_state,)
        kw = dict(encoder_outputs=enc, attention_mask=b["attention_mask"],
                  decoder_input_ids=b["decoder_input_ids"])
        assert max_diff(ref(**kw).logits, ours(**kw).logits) < TOL


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


def test_random_init_constructors_and_mutable_config(reference_dir):
    from encdec.core import BertConfig, EncoderDecoderConfig, GPT2Config

    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37),
        GPT2Config(vocab_size=99, n_embd=24, n_layer=2, n_head=4))
    model = EncoderDecoderModel(config=config)
    assert model.enc_to_dec_proj is not None
    w = model.decoder.transformer.h[0].crossattention.c_attn.weight
    assert abs(w.std().item() - 0.02) < 0.005 and not w.is_meta
    assert model.decoder.lm_head.weight is model.decoder.transformer.wte.weight
    model.config.decoder_start_token_id, model.config.pad_token_id = 2, 0
    b = to_torch(make_batch())
    out = model(input_ids=b["input_ids"], labels=b["labels"])
    assert torch.isfinite(out.loss)
    model.config.decoder.use_cache = False  # the backbones share the composite's config
    assert model(input_ids=b["input_ids"], labels=b["labels"]).past_key_values is None
    again = EncoderDecoderModel(encoder=model.encoder, decoder=model.decoder)
    assert again.encoder is model.encoder and again.enc_to_dec_proj is not None
    same = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4),
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)))
    assert same.enc_to_dec_proj is None
    assert same.decoder.cls.predictions.decoder.bias is same.decoder.cls.predictions.bias

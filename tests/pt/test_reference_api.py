"""Migration by changing an import (issue 14), PyTorch backend: the reference's documented calls
built with transformers' own configs and objects, and compared with it (1e-5, identical tokens).
"""

from __future__ import annotations

import pytest
import torch

import encdec.pt as E
from encdec.core.config import BertConfig, GPT2Config
from encdec.core.outputs import GenerateOutput
from encdec.pt import EncoderDecoderModel
from tests.conftest import DECODER_START, EOS, PAD, make_batch, tiny_kwargs

from .conftest import max_diff, to_torch

BERT = tiny_kwargs("bert")
GPT2 = tiny_kwargs("gpt2")


def _save(ref, directory):
    ref.save_pretrained(directory)
    return directory


def _reference_backbones(tmp_path, decoder: str, seed: int = 0):
    """transformers' BertModel and a cross-attending causal LM (GPT-2: `add_cross_attention`
    only, its config has no `is_decoder`; the reference's BERT layers need `is_decoder` too),
    saved, and ours loaded from them."""
    import transformers as tr

    torch.manual_seed(seed)
    enc = tr.BertModel(tr.BertConfig(**BERT)).eval()
    if decoder == "gpt2":
        dec = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2, add_cross_attention=True))
        ours_cls = E.GPT2LMHeadModel
    else:
        dec = tr.BertLMHeadModel(tr.BertConfig(**BERT, is_decoder=True,
                                                 add_cross_attention=True))
        ours_cls = E.BertLMHeadModel
    dec.eval()
    ours_enc = E.BertModel.from_pretrained(_save(enc, tmp_path / "enc"))
    ours_dec = ours_cls.from_pretrained(_save(dec, tmp_path / "dec"))
    return enc, dec, ours_enc, ours_dec


def _inputs(**extra):
    b = to_torch(make_batch())
    return dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                decoder_input_ids=b["decoder_input_ids"], **extra)


def _set_ids(*models):
    for m in models:
        m.config.decoder_start_token_id, m.config.pad_token_id = DECODER_START, PAD
        m.config.decoder.eos_token_id = EOS


# --- 1. a decoder object with cross-attention (no is_decoder) ---------------------------------


@pytest.mark.parametrize("decoder", ["gpt2", "bert"])
def test_decoder_object_with_cross_attention_against_hf(tmp_path, decoder):
    import transformers as tr

    enc, dec, ours_enc, ours_dec = _reference_backbones(tmp_path, decoder)
    ref = tr.EncoderDecoderModel(encoder=enc, decoder=dec).eval()
    ours = EncoderDecoderModel(encoder=ours_enc, decoder=ours_dec).eval()
    assert ours.config.decoder.is_decoder and ours.decoder.config is ours.config.decoder
    kw = _inputs()
    with torch.no_grad():
        assert max_diff(ref(**kw).logits, ours(**kw).logits) < 1e-5


def test_decoder_object_without_cross_attention_refused():
    enc = E.BertModel(BertConfig(**BERT))
    dec = E.GPT2LMHeadModel(GPT2Config(**GPT2))
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no cross-attention layers"):
        EncoderDecoderModel(encoder=enc, decoder=dec)


# --- 2. model objects in from_encoder_decoder_pretrained ----------------------------------------


@pytest.mark.parametrize("given", ["encoder", "decoder"])
def test_warm_start_with_a_model_object_against_hf(tmp_path, given):
    import transformers as tr

    enc, dec, ours_enc, ours_dec = _reference_backbones(tmp_path, "gpt2")
    if given == "decoder":
        ref = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc",
                                                                     decoder_model=dec)
        ours, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
            tmp_path / "enc", decoder_model=ours_dec, output_loading_info=True)
        assert ours.decoder is ours_dec
    else:
        ref = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(
            encoder_model=enc, decoder_pretrained_model_name_or_path=tmp_path / "dec")
        ours, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
            encoder_model=ours_enc, decoder_pretrained_model_name_or_path=tmp_path / "dec",
            output_loading_info=True)
        assert ours.encoder is ours_enc
    assert info[given].missing == [] and info[given].dropped == []
    assert info["encoder"].missing == [] and info["decoder"].missing == []
    kw = _inputs()
    with torch.no_grad():
        assert max_diff(ref.eval()(**kw).logits, ours(**kw).logits) < 1e-5


def test_warm_start_without_a_side_names_it(tmp_path):
    _, _, ours_enc, ours_dec = _reference_backbones(tmp_path, "gpt2")
    with pytest.raises(ValueError, match="no encoder: pass encoder_pretrained_model_name_or_path"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(decoder_model=ours_dec)
    with pytest.raises(ValueError, match="no decoder: pass decoder_pretrained_model_name_or_path"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="decoder_model and decoder_pretrained"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc", tmp_path / "dec",
                                                            decoder_model=ours_dec)
    with pytest.raises(ValueError, match="decoder_dropout"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc",
                                                            decoder_model=ours_dec,
                                                            decoder_dropout=0.0)
    plain = E.GPT2LMHeadModel(GPT2Config(**GPT2))
    with pytest.raises(ValueError, match="no cross-attention layers"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc", decoder_model=plain)


# --- 3. per-side keyword arguments of forward; unknown names refused --------------------------


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2"])
def test_forward_routes_side_kwargs_against_hf(reference_dir, hf_model, pair):
    ref = hf_model(reference_dir(pair))
    ours = EncoderDecoderModel.from_pretrained(reference_dir(pair))
    b = _inputs()
    (B, S), T = b["input_ids"].shape, b["decoder_input_ids"].shape[1]
    g = torch.Generator().manual_seed(0)
    kw = dict(b, token_type_ids=torch.randint(0, 2, (B, S), generator=g),
              position_ids=torch.randint(0, 60, (B, S), generator=g),
              decoder_token_type_ids=torch.randint(0, 2, (B, T), generator=g),
              decoder_position_ids=torch.randint(0, 60, (B, T), generator=g))
    with torch.no_grad():
        want, got = ref(**kw), ours(**kw)
        assert max_diff(want.logits, got.logits) < 1e-5
        assert max_diff(want.encoder_last_hidden_state, got.encoder_last_hidden_state) < 1e-5
        plain = ours(**b)
    assert max_diff(plain.logits, got.logits) > 1e-3  # the arguments reached both sides


@pytest.mark.parametrize("name", ["foo", "decoder_foo", "decoder_labels", "pooler"])
def test_unknown_forward_kwarg_named(reference_dir, name):
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        ours(**_inputs(), **{name: 1})


def test_unknown_generate_kwarg_named(reference_dir):
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    with pytest.raises(TypeError, match="foo"):
        ours.generate(_inputs()["input_ids"], foo=1)


# --- 4. output switches from the configs -------------------------------------------------------


def test_output_switches_from_configs_against_hf(reference_dir, hf_model):
    ref = hf_model(reference_dir("bert2bert"), attn="eager")
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    for m in (ref, ours):
        for side in (m.config.encoder, m.config.decoder):
            side.output_attentions = side.output_hidden_states = True
    kw = _inputs()
    with torch.no_grad():
        want, got = ref(**kw), ours(**kw)
    names = ("encoder_attentions", "decoder_attentions", "cross_attentions",
             "encoder_hidden_states", "decoder_hidden_states")
    for name in names:
        assert getattr(want, name) is not None and len(getattr(got, name)) == 2 + name.endswith(
            "hidden_states"), name
        assert max_diff(getattr(want, name), getattr(got, name)) < 1e-5, name
    with torch.no_grad():  # the argument wins over the config
        off = ours(**kw, output_attentions=False, output_hidden_states=False)
    assert all(getattr(off, n) is None for n in names)


def test_use_cache_and_return_dict_from_configs_against_hf(reference_dir, hf_model):
    ref = hf_model(reference_dir("bert2gpt2"))
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    kw = _inputs()
    with torch.no_grad():
        assert ours(**kw).past_key_values is not None  # decoder config's use_cache=True
        for m in (ref, ours):
            m.config.decoder.use_cache = False
        assert ours(**kw).past_key_values is None
        assert ours(**kw, use_cache=True).past_key_values is not None
        for m in (ref, ours):
            m.config.return_dict = False
        want, got = ref(**kw), ours(**kw)
    assert isinstance(want, tuple) and isinstance(got, tuple)
    assert max_diff(want[0], got[0]) < 1e-5
    assert not isinstance(ours(**kw, return_dict=True), tuple)


# --- 6. generate: ids by default, an output with .sequences on request --------------------------


def test_generate_ids_or_sequences_against_hf(reference_dir, hf_model):
    ref = hf_model(reference_dir("bert2gpt2"))
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    b = _inputs()
    kw = dict(attention_mask=b["attention_mask"], max_new_tokens=5, num_beams=2)
    with torch.no_grad():
        want = ref.generate(b["input_ids"], **kw)
        ids = ours.generate(b["input_ids"], **kw)
        out = ours.generate(b["input_ids"], **kw, return_dict_in_generate=True)
    assert isinstance(ids, torch.Tensor) and torch.equal(ids, want)
    assert isinstance(out, GenerateOutput) and torch.equal(out.sequences, want)

"""Migration by changing an import (issue 14), TensorFlow backend: the reference's documented
calls built with transformers' own configs and objects, and compared with it (1e-5, identical
tokens). Keras-specific: routed keyword arguments through a dict input (what `model.fit` passes)
and inside a compiled `tf.function`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import encdec.tf as E
from encdec.core.config import BertConfig, GPT2Config
from encdec.core.outputs import GenerateOutput
from encdec.tf import EncoderDecoderModel
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
    import torch
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


def _inputs(**extra) -> dict[str, np.ndarray]:
    b = make_batch()
    return dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                decoder_input_ids=b["decoder_input_ids"], **extra)


def _torch(kw: dict) -> dict:
    return to_torch(kw)


# --- 1. a decoder object with cross-attention (no is_decoder) ---------------------------------


@pytest.mark.parametrize("decoder", ["gpt2", "bert"])
def test_decoder_object_with_cross_attention_against_hf(tmp_path, decoder):
    import torch
    import transformers as tr

    enc, dec, ours_enc, ours_dec = _reference_backbones(tmp_path, decoder)
    ref = tr.EncoderDecoderModel(encoder=enc, decoder=dec).eval()
    ours = EncoderDecoderModel(encoder=ours_enc, decoder=ours_dec)
    assert ours.config.decoder.is_decoder and ours.decoder.config is ours.config.decoder
    kw = _inputs()
    with torch.no_grad():
        assert max_diff(ref(**_torch(kw)).logits, ours(**kw).logits) < 1e-5


def test_decoder_object_without_cross_attention_refused():
    enc = E.BertModel(BertConfig(**BERT))
    dec = E.GPT2LMHeadModel(GPT2Config(**GPT2))
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no cross-attention layers"):
        EncoderDecoderModel(encoder=enc, decoder=dec)
    # found from the layers, not the flag: setting it afterwards builds no cross-attention
    dec.config.add_cross_attention = True
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no cross-attention layers"):
        EncoderDecoderModel(encoder=enc, decoder=dec)


# --- 2. model objects in from_encoder_decoder_pretrained ----------------------------------------


@pytest.mark.parametrize("given", ["encoder", "decoder", "both"])
def test_warm_start_with_model_objects_against_hf(tmp_path, given):
    import torch
    import transformers as tr

    enc, dec, ours_enc, ours_dec = _reference_backbones(tmp_path, "gpt2")
    enc_path, dec_path = tmp_path / "enc", tmp_path / "dec"
    ref_kw = dict(encoder_model=enc if given != "decoder" else None,
                  decoder_model=dec if given != "encoder" else None)
    ours_kw = dict(encoder_model=ours_enc if given != "decoder" else None,
                   decoder_model=ours_dec if given != "encoder" else None)
    paths = (None if given != "decoder" else enc_path, None if given != "encoder" else dec_path)
    ref = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(*paths, **ref_kw).eval()
    ours, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        *paths, **ours_kw, output_loading_info=True)
    for side in ("encoder", "decoder"):
        if ours_kw[f"{side}_model"] is not None:
            assert getattr(ours, side) is ours_kw[f"{side}_model"]
            assert info[side].missing == [] and info[side].dropped == []
    assert info["encoder"].missing == [] and info["decoder"].missing == []
    kw = _inputs()
    with torch.no_grad():
        assert max_diff(ref(**_torch(kw)).logits, ours(**kw).logits) < 1e-5


def test_warm_start_without_a_side_names_it(tmp_path):
    _, _, _, ours_dec = _reference_backbones(tmp_path, "gpt2")
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


# --- 3. per-side keyword arguments of call; unknown names refused -----------------------------


def _side_kwargs(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    (B, S), T = b["input_ids"].shape, b["decoder_input_ids"].shape[1]
    rng = np.random.default_rng(0)
    return dict(token_type_ids=rng.integers(0, 2, (B, S)),
                position_ids=rng.integers(0, 60, (B, S)),
                decoder_token_type_ids=rng.integers(0, 2, (B, T)),
                decoder_position_ids=rng.integers(0, 60, (B, T)))


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2"])
def test_call_routes_side_kwargs_against_hf(reference_dir, hf_model, pair):
    import torch

    ref = hf_model(reference_dir(pair))
    ours = EncoderDecoderModel.from_pretrained(reference_dir(pair))
    b = _inputs()
    kw = dict(b, **_side_kwargs(b))
    with torch.no_grad():
        want = ref(**_torch(kw))
    got = ours(**kw)
    assert max_diff(want.logits, got.logits) < 1e-5
    assert max_diff(want.encoder_last_hidden_state, got.encoder_last_hidden_state) < 1e-5
    assert max_diff(ours(**b).logits, got.logits) > 1e-3  # the arguments reached both sides
    # a dict as first argument (model.fit's path) and a compiled call route them the same way
    assert max_diff(ours(kw).logits, got.logits) == 0.0
    compiled = tf.function(lambda x: ours(**x).logits, jit_compile=True)
    assert max_diff(compiled({k: tf.constant(v) for k, v in kw.items()}), got.logits) < 1e-5


@pytest.mark.parametrize("name", ["foo", "decoder_foo", "decoder_labels", "pooler",
                                  "decoder_encoder_hidden_states"])
def test_unknown_call_kwarg_named(reference_dir, name):
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        ours(**_inputs(), **{name: 1})


def test_unknown_generate_kwarg_named(reference_dir):
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    with pytest.raises(TypeError, match="foo"):
        ours.generate(_inputs()["input_ids"], foo=1)


# --- 4. output switches from the configs -------------------------------------------------------


def test_output_switches_from_configs_against_hf(reference_dir, hf_model):
    import torch

    ref = hf_model(reference_dir("bert2bert"), attn="eager")
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    for m in (ref, ours):
        for side in (m.config.encoder, m.config.decoder):
            side.output_attentions = side.output_hidden_states = True
    kw = _inputs()
    with torch.no_grad():
        want = ref(**_torch(kw))
    got = ours(**kw)
    names = ("encoder_attentions", "decoder_attentions", "cross_attentions",
             "encoder_hidden_states", "decoder_hidden_states")
    for name in names:
        assert getattr(want, name) is not None and len(getattr(got, name)) == 2 + name.endswith(
            "hidden_states"), name
        assert max_diff(getattr(want, name), getattr(got, name)) < 1e-5, name
    off = ours(**kw, output_attentions=False, output_hidden_states=False)  # the argument wins
    assert all(getattr(off, n) is None for n in names)


def test_use_cache_and_return_dict_from_configs_against_hf(reference_dir, hf_model):
    import torch

    ref = hf_model(reference_dir("bert2gpt2"))
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    kw = _inputs()
    assert ours(**kw).past_key_values is not None  # decoder config's use_cache=True
    for m in (ref, ours):
        m.config.decoder.use_cache = False
    assert ours(**kw).past_key_values is None
    assert ours(**kw, use_cache=True).past_key_values is not None
    for m in (ref, ours):
        m.config.return_dict = False
    with torch.no_grad():
        want = ref(**_torch(kw))
    got = ours(**kw)
    assert isinstance(want, tuple) and isinstance(got, tuple)
    assert max_diff(want[0], got[0]) < 1e-5
    assert not isinstance(ours(**kw, return_dict=True), tuple)


# --- 6. generate: ids by default, an output with .sequences on request --------------------------


def test_generate_ids_or_sequences_against_hf(reference_dir, hf_model):
    import torch

    ref = hf_model(reference_dir("bert2gpt2"))
    ours = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    for m in (ref, ours):
        m.config.decoder.eos_token_id = EOS
    assert ours.config.decoder_start_token_id == DECODER_START and ours.config.pad_token_id == PAD
    b = _inputs()
    kw = dict(attention_mask=b["attention_mask"], max_new_tokens=5, num_beams=2)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(b["input_ids"]),
                            **{**kw, "attention_mask": torch.from_numpy(b["attention_mask"])})
    ids = ours.generate(b["input_ids"], **kw)
    out = ours.generate(b["input_ids"], **kw, return_dict_in_generate=True)
    assert isinstance(ids, tf.Tensor) and not isinstance(ids, GenerateOutput)
    np.testing.assert_array_equal(ids.numpy(), want.numpy())
    assert isinstance(out, GenerateOutput)
    np.testing.assert_array_equal(np.asarray(out.sequences), want.numpy())

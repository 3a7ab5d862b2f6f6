"""Issue 14: the reference's documented API, used as its users do, in every backend: each
case built with transformers' own configs and objects where the reference does, and compared
with transformers' `EncoderDecoderModel` on the same weights (tests/tolerances.py bounds,
identical tokens). The numbered sections are the issue's items.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core import EncoderDecoderConfig
from encdec.core.outputs import GenerateOutput
from tests import tolerances as tol
from tests.conftest import make_batch, pair_batch
from tests.generation import oracle
from tests.harness.backends import ADAPTERS, OUTPUTS, _numpy, outputs_to_numpy

BACKENDS = list(ADAPTERS)


def backends(*slow: str) -> list:
    """BACKENDS, those in `slow` declared slow (their test says what covers them fast)."""
    return [pytest.param(b, marks=pytest.mark.slow) if b in slow else b for b in BACKENDS]


BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
GPT2 = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=None, eos_token_id=None)  # no eos: every row runs to the maximum
START, PAD = 2, 0
STD = 0.15  # matrices redrawn (as tests/generation/oracle.py) so that tokens depend on inputs


@dataclass(frozen=True)
class Checkpoints:
    """Backbones saved by transformers: a BERT encoder, a GPT-2 LM with cross-attention but
    no `is_decoder`, a plain GPT-2 LM (no cross-attention) and a BERT LM with both."""

    encoder: Path
    decoder: Path
    plain_decoder: Path
    bert_decoder: Path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    import torch
    import transformers as tr

    torch.manual_seed(0)
    enc = tr.BertModel(tr.BertConfig(**BERT))
    dec = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2, add_cross_attention=True))
    plain = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2))
    bert_dec = tr.BertLMHeadModel(tr.BertConfig(**BERT, is_decoder=True, add_cross_attention=True))
    assert not getattr(dec.config, "is_decoder", False)  # item 1: GPT-2 configs carry none
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in (enc, dec, bert_dec):
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, STD, generator=g)
                else:  # LayerNorm / bias values off their 1s and 0s
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    root = tmp_path_factory.mktemp("migration")
    out = Checkpoints(root / "bert", root / "gpt2", root / "gpt2-plain", root / "bert-lm")
    for model, d in ((enc, out.encoder), (dec, out.decoder), (plain, out.plain_decoder),
                     (bert_dec, out.bert_decoder)):
        model.save_pretrained(d)
    return out


DECODERS = {"gpt2": ("GPT2LMHeadModel", "decoder"), "bert": ("BertLMHeadModel", "bert_decoder")}


def hf_composite(ck: Checkpoints, encoder_kwargs=None, decoder_kwargs=None, decoder="gpt2"):
    """transformers' `EncoderDecoderModel(encoder=..., decoder=...)` of the saved backbones
    (eager attention: the one that returns attention weights), eval mode."""
    import transformers as tr

    lm, path = DECODERS[decoder]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = tr.BertModel.from_pretrained(ck.encoder, attn_implementation="eager",
                                           **(encoder_kwargs or {}))
        dec = getattr(tr, lm).from_pretrained(getattr(ck, path), attn_implementation="eager",
                                              **(decoder_kwargs or {}))
        model = tr.EncoderDecoderModel(encoder=enc, decoder=dec)
    model.config.decoder_start_token_id, model.config.pad_token_id = START, PAD
    return model.eval()


def ours_composite(ad, ck: Checkpoints, encoder_kwargs=None, decoder_kwargs=None,
                   decoder="gpt2"):
    """Ours, built as the reference is: `EncoderDecoderModel(encoder=..., decoder=...)` of
    the backend's `BertModel` / `GPT2LMHeadModel` loaded from the same directories."""
    m, (lm, path) = ad.module, DECODERS[decoder]
    model = m.EncoderDecoderModel(
        encoder=m.BertModel.from_pretrained(ck.encoder, **(encoder_kwargs or {})),
        decoder=getattr(m, lm).from_pretrained(getattr(ck, path), **(decoder_kwargs or {})))
    model.config.decoder_start_token_id, model.config.pad_token_id = START, PAD
    model.generation_config.decoder_start_token_id = START
    model.generation_config.pad_token_id = PAD
    getattr(model, "eval", lambda: None)()  # pt / flax: dropout off (Keras: training=False)
    return model


@pytest.fixture(scope="session")
def composites(adapters, checkpoints):
    """`composites(backend)` -> ours built from objects (item 1's case), once per backend."""
    return functools.cache(lambda backend: ours_composite(adapters[backend], checkpoints))


@pytest.fixture(scope="session")
def reference(checkpoints):
    return hf_composite(checkpoints)


def batch() -> dict[str, np.ndarray]:
    """Two padded rows with labels (-100 in places) and decoder inputs."""
    return make_batch(3, batch=2, src_len=7, tgt_len=5)


def hf_forward(model, inputs: dict[str, np.ndarray], **kw) -> dict:
    """transformers' forward on numpy inputs -> numpy outputs (every key of OUTPUTS present)."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its FutureWarning for labels with decoder_input_ids
        out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}, **kw)
    return outputs_to_numpy(out)


def assert_same(got: dict, want: dict, what: str, keys=None) -> None:
    """Every output the reference returned is there and within FORWARD; nothing extra."""
    keys = want.keys() if keys is None else keys
    assert set(keys) <= got.keys(), (what, sorted(got), sorted(keys))
    for key in keys:
        tol.assert_close(got[key], want[key], tol.FORWARD, f"{what} {key}")


# --- 1. a GPT-2 decoder built from objects ---------------------------------------------------

# flax (both) and every backend's BERT object: CI; GPT-2's in pt and tf build the same way
@pytest.mark.parametrize("backend", backends("flax"))
@pytest.mark.parametrize("decoder", ["gpt2", pytest.param("bert", marks=pytest.mark.slow)])
def test_decoder_object_with_cross_attention(adapters, composites, reference, checkpoints,
                                             backend, decoder):
    if decoder == "gpt2":  # no is_decoder in its config
        model, ref = composites(backend), reference
    else:
        model = ours_composite(adapters[backend], checkpoints, decoder=decoder)
        ref = hf_composite(checkpoints, decoder=decoder)
    assert model.config.decoder.add_cross_attention and model.config.decoder.is_decoder
    assert model.decoder.config is model.config.decoder
    got = adapters[backend].forward(model, batch())
    assert_same(got, hf_forward(ref, batch()), f"1 {backend} {decoder}", ("logits", "loss"))


# flax: CI; pt and tf: the same check
@pytest.mark.parametrize("backend", backends("flax"))
@pytest.mark.parametrize("flag", [False, True], ids=["plain", "flag-set-after-build"])
def test_decoder_without_cross_attention_refused(adapters, checkpoints, backend, flag):
    """Refused by its layers, not its flag: `add_cross_attention` set on a built decoder's config
    builds no cross-attention; the message does not blame `is_decoder`."""
    m = adapters[backend].module
    dec = m.GPT2LMHeadModel.from_pretrained(checkpoints.plain_decoder)
    dec.config.add_cross_attention = flag
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no cross-attention layers") as e:
        m.EncoderDecoderModel(encoder=m.BertModel.from_pretrained(checkpoints.encoder),
                              decoder=dec)
    assert "is_decoder" not in str(e.value), e.value


# --- 2. model objects in from_encoder_decoder_pretrained ------------------------------------

@pytest.mark.parametrize("backend", backends("flax"))  # flax: CI; pt and tf: the same code
@pytest.mark.parametrize("objects", ["both", "encoder", "decoder"])
def test_from_encoder_decoder_pretrained_with_objects(adapters, checkpoints, backend, objects):
    import transformers as tr

    ck, ad = checkpoints, adapters[backend]

    def args(bert, gpt2):
        enc = bert.from_pretrained(ck.encoder) if objects in ("both", "encoder") else None
        dec = gpt2.from_pretrained(ck.decoder) if objects in ("both", "decoder") else None
        return ((None if enc is not None else ck.encoder, None if dec is not None else ck.decoder),
                dict(encoder_model=enc, decoder_model=dec))

    paths, kw = args(tr.BertModel, tr.GPT2LMHeadModel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_model = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(*paths, **kw).eval()
    want_model.config.decoder_start_token_id, want_model.config.pad_token_id = START, PAD
    want = hf_forward(want_model, batch())

    paths, kw = args(ad.module.BertModel, ad.module.GPT2LMHeadModel)
    got_model, info = ad.module.EncoderDecoderModel.from_encoder_decoder_pretrained(
        *paths, **kw, decoder_start_token_id=START, pad_token_id=PAD, output_loading_info=True)
    for side in ("encoder", "decoder"):  # a given object is kept; nothing missing either side
        assert kw[f"{side}_model"] in (None, getattr(got_model, side)), side
        assert info[side].missing == [] and info[side].dropped == [], (side, info[side])
    assert_same(ad.forward(got_model, batch()), want, f"2 {backend} {objects}",
                ("logits", "loss"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_without_a_side_names_it(adapters, checkpoints, backend):
    m = adapters[backend].module
    warm_start = m.EncoderDecoderModel.from_encoder_decoder_pretrained
    enc, dec = checkpoints.encoder, checkpoints.decoder
    dec_model = m.GPT2LMHeadModel.from_pretrained(dec)
    with pytest.raises(ValueError, match="no encoder: pass encoder_pretrained_model_name_or_path"):
        warm_start(decoder_model=dec_model)
    with pytest.raises(ValueError, match="no decoder: pass decoder_pretrained_model_name_or_path"):
        warm_start(enc)
    with pytest.raises(ValueError, match="decoder_model and decoder_pretrained"):
        warm_start(enc, dec, decoder_model=dec_model)
    with pytest.raises(ValueError, match="decoder_dropout"):  # config kwargs for an object
        warm_start(enc, decoder_model=dec_model, decoder_dropout=0.0)
    plain = m.GPT2LMHeadModel.from_pretrained(checkpoints.plain_decoder)
    with pytest.raises(ValueError, match="no cross-attention layers"):
        warm_start(enc, decoder_model=plain)


# --- 3. per-side keyword arguments in forward ------------------------------------------------

def routed(name: str, b: dict[str, np.ndarray], decoder_vocab: int) -> dict[str, np.ndarray]:
    """Non-default values of the routed argument `name` (or of all of them: "all")."""
    rng = np.random.default_rng(5)
    src, tgt = b["input_ids"].shape, b["decoder_input_ids"].shape
    values = {
        "token_type_ids": rng.integers(0, 2, src),
        # GPT-2 embeds token types with its word embeddings (any id), BERT with 2 types
        "decoder_token_type_ids": rng.integers(0, decoder_vocab, tgt),
        "position_ids": np.broadcast_to(np.arange(src[1]) + 3, src).copy(),
        "decoder_position_ids": np.broadcast_to(np.arange(tgt[1]) + 5, tgt).copy(),
    }
    return values if name == "all" else {name: values[name]}


ROUTED = ["token_type_ids", "decoder_token_type_ids", "position_ids", "decoder_position_ids",
          "all"]


# bert2gpt2 in tf and flax: CI (bert2bert in every backend, and bert2gpt2 in pt, stay fast)
@pytest.mark.parametrize("name", ROUTED)
@pytest.mark.parametrize("pair, backend", [
    pytest.param(p, b, marks=pytest.mark.slow) if p == "bert2gpt2" and b != "pt" else (p, b)
    for p in ("bert2gpt2", "bert2bert") for b in BACKENDS])
def test_forward_routes_side_kwargs(adapters, composites, reference, ours, pair, name, backend):
    """Each routed argument changes the outputs exactly as it changes the reference's."""
    ad = adapters[backend]
    if pair == "bert2gpt2":  # built from objects; GPT-2 decoder: token types via wte
        model, ref, b, vocab = composites(backend), reference, batch(), 99
    else:  # BERT decoder: token types 0/1
        model, ref, b, vocab = ours(pair, backend), oracle.reference(pair), pair_batch(pair), 2
    extra = routed(name, b, vocab)
    want, base = hf_forward(ref, {**b, **extra}), hf_forward(ref, b)
    assert tol.max_abs_diff(want["logits"], base["logits"]) > 1e-3, "the case changes nothing"
    got = ad.forward(model, b, **ad.inputs(extra))
    assert_same(got, want, f"3 {pair} {backend} {name}",
                ("logits", "loss", "encoder_last_hidden_state"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, bad", [
    *(("forward", b) for b in ("bogus_argument", "decoder_bogus_argument", "decoder_labels",
                               "pooler", "decoder_encoder_hidden_states")),
    ("generate", "bogus_argument")])
def test_unknown_kwargs_refused_by_name(adapters, composites, backend, call, bad):
    ad, b = adapters[backend], batch()
    if call == "generate":
        with pytest.raises(TypeError, match=bad):
            ad.generate(composites(backend), b["input_ids"], b["attention_mask"],
                        max_new_tokens=2, **{bad: 1})
        return
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{bad}'"):
        ad.forward(composites(backend), b, **{bad: ad.inputs({"x": np.ones(2)})["x"]})


# --- 4. output switches set on the configs ---------------------------------------------------

FLAG_CASES = {  # name -> (encoder config kwargs, decoder config kwargs, forward kwargs)
    "attentions": (dict(output_attentions=True), dict(output_attentions=True), {}),
    "hidden_states": (dict(output_hidden_states=True), dict(output_hidden_states=True), {}),
    "encoder_only": (dict(output_attentions=True, output_hidden_states=True), {}, {}),
    "decoder_only": ({}, dict(output_attentions=True, output_hidden_states=True), {}),
    "argument_wins": (dict(output_attentions=True, output_hidden_states=True),
                      dict(output_attentions=True, output_hidden_states=True),
                      dict(output_attentions=False, output_hidden_states=False)),
    "no_cache": ({}, dict(use_cache=False), {}),
    "cache_argument_wins": ({}, dict(use_cache=False), dict(use_cache=True)),
}


# use_cache=True over the config's False in tf and flax: CI (pt's stays fast, and so does
# every other case in every backend)
@pytest.mark.parametrize("case, backend", [
    pytest.param(c, b, marks=pytest.mark.slow) if c == "cache_argument_wins" and b != "pt"
    else (c, b) for c in FLAG_CASES for b in BACKENDS])
def test_config_output_switches(adapters, checkpoints, backend, case):
    enc_kw, dec_kw, call_kw = FLAG_CASES[case]
    ad = adapters[backend]
    ref = hf_composite(checkpoints, enc_kw, dec_kw)
    b = batch()
    import torch

    with torch.no_grad():
        raw = ref(**{k: torch.from_numpy(v) for k, v in b.items()}, **call_kw)
    want = outputs_to_numpy(raw)
    model = ours_composite(ad, checkpoints, enc_kw, dec_kw)
    got_raw = model(**ad.inputs(b), **call_kw)
    got = outputs_to_numpy(got_raw)
    # the same outputs present and absent as in the reference, and equal
    assert {k for k in OUTPUTS if k in got} == {k for k in OUTPUTS if k in want}, \
        (case, sorted(got), sorted(want))
    assert_same(got, want, f"4 {backend} {case}")
    assert (got_raw.get("past_key_values") is None) == (raw.get("past_key_values") is None), \
        (case, "past_key_values")


@pytest.mark.parametrize("backend", backends("flax"))
def test_config_return_dict(adapters, checkpoints, reference, backend):
    ad = adapters[backend]
    model = ours_composite(ad, checkpoints)
    model.config.return_dict = False
    got = model(**ad.inputs(batch()))
    assert isinstance(got, tuple), type(got)
    want = hf_forward(reference, batch())
    # as the reference's to_tuple(): loss first (labels given), then logits
    tol.assert_close(_numpy(got[0]), want["loss"], tol.FORWARD, f"4 {backend} tuple loss")
    tol.assert_close(_numpy(got[1]), want["logits"], tol.FORWARD, f"4 {backend} tuple logits")
    assert not isinstance(model(**ad.inputs(batch()), return_dict=True), tuple)


# --- 5. tie_encoder_decoder in from_encoder_decoder_configs ----------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_encoder_decoder_keyword(adapters, backend, tmp_path):
    """Ours saved -> transformers loads the tied model (equal weights: transformers 5 keeps the
    flag but no longer ties); transformers' save -> ours loads it with the decoder's base
    weights the very variables of the encoder's, bit for bit the model we saved."""
    import transformers as tr

    from encdec.core import BertConfig

    ad = adapters[backend]
    ref_config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(
        tr.BertConfig(**BERT), tr.BertConfig(**BERT, is_decoder=True, add_cross_attention=True),
        tie_encoder_decoder=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**BERT), BertConfig(**BERT, is_decoder=True, add_cross_attention=True),
        tie_encoder_decoder=True)
    assert config.tie_encoder_decoder and ref_config.tie_encoder_decoder
    config.decoder_start_token_id, config.pad_token_id = START, PAD
    model = ad.module.EncoderDecoderModel(config=config)
    ad.save(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tr.EncoderDecoderModel.from_pretrained(tmp_path / "ours").eval()
    assert ref.config.tie_encoder_decoder
    # tied: the decoder's base weights are the encoder's
    enc, dec = ref.encoder.state_dict(), ref.decoder.bert.state_dict()
    shared = [n for n in dec if n in enc]
    assert shared and all(bool((dec[n] == enc[n]).all()) for n in shared)
    getattr(model, "eval", lambda: None)()
    got = ad.forward(model, batch())
    assert_same(got, hf_forward(ref, batch()), f"5 {backend}", ("logits", "loss"))
    # the decoder's copies written in full, as the reference writes them
    ref.save_pretrained(tmp_path / "ref")
    assert (load_file(tmp_path / "ours" / "model.safetensors").keys()
            == load_file(tmp_path / "ref" / "model.safetensors").keys())
    again = ad.load(tmp_path / "ref")
    assert again.config.tie_encoder_decoder
    q, x = "encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"
    for name in (q, x):
        assert ad.variable(again, "decoder.bert." + name) is ad.variable(again, "encoder." + name)
    cross = "decoder.bert." + q.replace(".attention.", ".crossattention.")
    assert ad.variable(again, cross) is not ad.variable(again, "decoder.bert." + q)
    reloaded = ad.forward(again, batch())
    for key in ("logits", "loss"):  # the very weights we saved
        tol.assert_close(reloaded[key], got[key], tol.SAVE_LOAD, f"5 {backend} reloaded {key}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_around_a_given_encoder_takes_its_values(adapters, backend, tmp_path):
    """With `tie_encoder_decoder`, a warm start around a given encoder makes the decoder's base
    weights that encoder's variables: its values win over the decoder checkpoint's (as the
    reference's post_init tie)."""
    from encdec.core import BertConfig

    ad = adapters[backend]
    m, q = ad.module, "encoder.layer.0.attention.self.query.weight"
    m.BertLMHeadModel(BertConfig(**BERT, is_decoder=True, add_cross_attention=True)
                      ).save_pretrained(tmp_path / "dec")
    encoder = m.BertModel(BertConfig(**BERT))
    query = ad.state(encoder)[q]
    model, reports = m.EncoderDecoderModel.from_encoder_decoder_pretrained(
        decoder_pretrained_model_name_or_path=tmp_path / "dec", encoder_model=encoder,
        tie_encoder_decoder=True, output_loading_info=True)
    assert model.encoder is encoder
    assert reports["encoder"].missing == [] and reports["decoder"].missing == []
    assert ad.variable(model, "decoder.bert." + q) is ad.variable(model, "encoder." + q)
    np.testing.assert_array_equal(ad.state(model)["decoder.bert." + q], query)


# --- 6. generate's return value ---------------------------------------------------------------

def hf_tokens(reference, **kw) -> np.ndarray:
    b = batch()
    return oracle.hf_generate(reference, b["input_ids"], b["attention_mask"],
                              decoder_start_token_id=START, pad_token_id=PAD, **kw)


@pytest.mark.parametrize("backend", backends("tf", "flax"))
def test_generate_returns_ids_and_sequences(adapters, composites, reference, backend):
    ad, model, b = adapters[backend], composites(backend), batch()
    kw = dict(max_new_tokens=5, num_beams=2)
    want = hf_tokens(reference, **kw)
    x = ad.inputs({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    ids = model.generate(x["input_ids"], x["attention_mask"], **kw)
    # the ids themselves (the backend's tensor), as the reference's pt
    assert type(ids) is type(x["input_ids"]) and not hasattr(ids, "sequences"), type(ids)
    np.testing.assert_array_equal(_numpy(ids), want)
    out = model.generate(x["input_ids"], x["attention_mask"], **kw, return_dict_in_generate=True)
    assert isinstance(out, GenerateOutput), type(out)
    np.testing.assert_array_equal(_numpy(out.sequences), want)


# --- 7. generation length defaults -----------------------------------------------------------

@pytest.mark.parametrize("backend", backends("tf", "flax"))
@pytest.mark.parametrize("length", [{}, {"max_length": 20}])
def test_generation_length_defaults(adapters, composites, reference, backend, length):
    """No length given: 20 new tokens after the start token (the reference's PyTorch rule) in
    every backend; `max_length=20`: 20 in total (the reference's TF/Flax default)."""
    ad, model, b = adapters[backend], composites(backend), batch()
    want = hf_tokens(reference, **length)
    assert want.shape[1] == (21 if not length else 20), want.shape
    if length:
        got = ad.generate(model, b["input_ids"], b["attention_mask"], **length)
    else:  # with the reference's warning
        with pytest.warns(UserWarning, match="model-agnostic default `max_length` \\(=21\\)"):
            got = ad.generate(model, b["input_ids"], b["attention_mask"])
    np.testing.assert_array_equal(got, want)

"""Issue 14: the reference's documented API, used as its users do, in every backend.

One test (or a few) per item of the issue, each building the case with transformers' own
configs and objects where the reference does, and comparing with transformers'
`EncoderDecoderModel` on the same weights (tests/tolerances.py bounds, identical tokens):

1. a GPT-2 decoder whose config has `add_cross_attention=True` but no `is_decoder` builds;
   a decoder without cross-attention layers is refused, saying so;
2. `from_encoder_decoder_pretrained(..., encoder_model=, decoder_model=)` (objects for paths);
3. extra `forward` keyword arguments routed as the reference (`decoder_` prefix -> decoder),
   unknown names refused by name in forward and generate;
4. `output_attentions` / `output_hidden_states` / `use_cache` on the sides' configs and
   `return_dict` on the composite's honoured when the argument is None;
5. `from_encoder_decoder_configs(..., tie_encoder_decoder=True)`;
6. `generate` returns ids; `return_dict_in_generate=True` an object with `.sequences`;
7. generation length: 20 new tokens by default (the reference's PyTorch rule) in all three,
   `max_length=20` the reference's TF/Flax total.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from encdec.core import EncoderDecoderConfig
from tests import tolerances as tol
from tests.conftest import make_batch, pair_batch
from tests.generation import oracle
from tests.harness.backends import ADAPTERS, OUTPUTS, _numpy, outputs_to_numpy

BACKENDS = list(ADAPTERS)
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)
GPT2 = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=None, eos_token_id=None)  # no eos: every row runs to the maximum
START, PAD = 2, 0
STD = 0.15  # matrices redrawn (as tests/generation/oracle.py) so that tokens depend on inputs


@dataclass(frozen=True)
class Checkpoints:
    """Backbones saved by transformers: a BERT encoder, a GPT-2 LM with cross-attention but
    no `is_decoder`, and a plain GPT-2 LM (no cross-attention)."""

    encoder: Path
    decoder: Path
    plain_decoder: Path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    import torch
    import transformers as tr

    torch.manual_seed(0)
    enc = tr.BertModel(tr.BertConfig(**BERT))
    dec = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2, add_cross_attention=True))
    plain = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2))
    assert not getattr(dec.config, "is_decoder", False)  # item 1: GPT-2 configs carry none
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in (enc, dec):
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, STD, generator=g)
                else:  # LayerNorm / bias values off their 1s and 0s
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    root = tmp_path_factory.mktemp("migration")
    out = Checkpoints(root / "bert", root / "gpt2", root / "gpt2-plain")
    for model, d in ((enc, out.encoder), (dec, out.decoder), (plain, out.plain_decoder)):
        model.save_pretrained(d)
    return out


def hf_composite(ck: Checkpoints, encoder_kwargs=None, decoder_kwargs=None):
    """transformers' `EncoderDecoderModel(encoder=..., decoder=...)` of the saved backbones
    (eager attention: the one that returns attention weights), eval mode."""
    import transformers as tr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = tr.BertModel.from_pretrained(ck.encoder, attn_implementation="eager",
                                           **(encoder_kwargs or {}))
        dec = tr.GPT2LMHeadModel.from_pretrained(ck.decoder, attn_implementation="eager",
                                                 **(decoder_kwargs or {}))
        model = tr.EncoderDecoderModel(encoder=enc, decoder=dec)
    model.config.decoder_start_token_id, model.config.pad_token_id = START, PAD
    return model.eval()


def ours_composite(ad, ck: Checkpoints, encoder_kwargs=None, decoder_kwargs=None):
    """Ours, built as the reference is: `EncoderDecoderModel(encoder=..., decoder=...)` of
    the backend's `BertModel` / `GPT2LMHeadModel` loaded from the same directories."""
    m = ad.module
    model = m.EncoderDecoderModel(
        encoder=m.BertModel.from_pretrained(ck.encoder, **(encoder_kwargs or {})),
        decoder=m.GPT2LMHeadModel.from_pretrained(ck.decoder, **(decoder_kwargs or {})))
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

@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt2_decoder_object_without_is_decoder(adapters, composites, reference, backend):
    model = composites(backend)
    assert model.config.decoder.add_cross_attention
    got = adapters[backend].forward(model, batch())
    assert_same(got, hf_forward(reference, batch()), f"1 {backend}", ("logits", "loss"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_without_cross_attention_refused(adapters, checkpoints, backend):
    m = adapters[backend].module
    with pytest.raises(ValueError, match=r"(?i)cross.attention") as e:
        m.EncoderDecoderModel(encoder=m.BertModel.from_pretrained(checkpoints.encoder),
                              decoder=m.GPT2LMHeadModel.from_pretrained(checkpoints.plain_decoder))
    assert "is_decoder" not in str(e.value), e.value  # cross-attention is what matters


# --- 2. model objects in from_encoder_decoder_pretrained ------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
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
    got_model = ad.module.EncoderDecoderModel.from_encoder_decoder_pretrained(
        *paths, **kw, decoder_start_token_id=START, pad_token_id=PAD)
    assert_same(ad.forward(got_model, batch()), want, f"2 {backend} {objects}",
                ("logits", "loss"))


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ROUTED)
@pytest.mark.parametrize("pair", ["bert2gpt2", "bert2bert"])
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
    assert_same(got, want, f"3 {pair} {backend} {name}", ("logits", "loss"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["bogus_argument", "decoder_bogus_argument"])
def test_forward_refuses_unknown_kwargs_by_name(adapters, composites, backend, bad):
    ad = adapters[backend]
    with pytest.raises(TypeError, match=bad):
        ad.forward(composites(backend), batch(), **{bad: ad.inputs({"x": np.ones(2)})["x"]})


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_refuses_unknown_kwargs_by_name(adapters, composites, backend):
    ad = adapters[backend]
    b = batch()
    with pytest.raises(TypeError, match="bogus_argument"):
        ad.generate(composites(backend), b["input_ids"], b["attention_mask"],
                    max_new_tokens=2, bogus_argument=1)


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
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(FLAG_CASES))
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


@pytest.mark.parametrize("backend", BACKENDS)
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
    ad.save(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tr.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert ref.config.tie_encoder_decoder
    # tied: the decoder's base weights are the encoder's
    enc, dec = ref.encoder.state_dict(), ref.decoder.bert.state_dict()
    shared = [n for n in dec if n in enc]
    assert shared and all(bool((dec[n] == enc[n]).all()) for n in shared)
    getattr(model, "eval", lambda: None)()
    assert_same(ad.forward(model, batch()), hf_forward(ref, batch()), f"5 {backend}",
                ("logits", "loss"))


# --- 6. generate's return value ---------------------------------------------------------------

def hf_tokens(reference, **kw) -> np.ndarray:
    b = batch()
    return oracle.hf_generate(reference, b["input_ids"], b["attention_mask"],
                              decoder_start_token_id=START, pad_token_id=PAD, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_returns_ids_and_sequences(adapters, composites, reference, backend):
    ad, model, b = adapters[backend], composites(backend), batch()
    want = hf_tokens(reference, max_new_tokens=6)
    x = ad.inputs({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    ids = model.generate(x["input_ids"], x["attention_mask"], max_new_tokens=6)
    assert not hasattr(ids, "sequences"), type(ids)  # the ids themselves, as the reference's pt
    np.testing.assert_array_equal(_numpy(ids), want)
    out = model.generate(x["input_ids"], x["attention_mask"], max_new_tokens=6,
                         return_dict_in_generate=True)
    np.testing.assert_array_equal(_numpy(out.sequences), want)


# --- 7. generation length defaults -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
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

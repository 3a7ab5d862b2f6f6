"""Every bad input refused with a clear error, in every backend, eager and compiled (issue 11).

One table (`CASES`) of inputs a model cannot run on. Each runs in pt, tf and flax: the forward
eagerly and, for the checks that hold inside a trace (shapes, dtypes, lengths), under the
backend's compiler (`tf.function(jit_compile=True)`, `nnx.jit`); `generate` in each backend's
own way (pt eager, tf's XLA program, flax's `nnx.jit` loop, which check on the host before
compiling). The error must be a `ValueError` whose message holds the argument, the value or
shape, and the limit. docs/reliability.md is rendered from the same table
(tests/docs/reliability.py).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from encdec.core import BertConfig, EncoderDecoderConfig

BACKENDS = ("pt", "tf", "flax")
ENC_VOCAB, DEC_VOCAB, POSITIONS, HIDDEN, HEADS, LAYERS = 99, 77, 16, 32, 4, 2
B, S, T = 2, 5, 4  # batch, source length, target length


def config() -> EncoderDecoderConfig:
    """A tiny bert2bert whose two sides have different vocabularies (so each side's limit is
    the one checked)."""
    def side(vocab: int, **kw) -> BertConfig:
        return BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, intermediate_size=37,
                          max_position_embeddings=POSITIONS, **kw)

    return EncoderDecoderConfig.from_encoder_decoder_configs(
        side(ENC_VOCAB), side(DEC_VOCAB), decoder_start_token_id=2, pad_token_id=0)


def ids(b: int = B, n: int = S, vocab: int = DEC_VOCAB) -> np.ndarray:
    """Valid ids (b, n) in [4, vocab)."""
    return (np.arange(b * n).reshape(b, n) % (vocab - 4) + 4).astype(np.int64)


def put(x: np.ndarray, where: tuple[int, int], value) -> np.ndarray:
    x = x.copy()
    x[where] = value
    return x


def past(length: int, b: int = B) -> tuple:
    """Legacy past_key_values of `length` cached positions (zeros: never read, the check runs
    first)."""
    k = np.zeros((b, HEADS, length, HIDDEN // HEADS), np.float32)
    c = np.zeros((b, HEADS, S, HIDDEN // HEADS), np.float32)
    return tuple((k, k, c, c) for _ in range(LAYERS))


@dataclass(frozen=True)
class Case:
    """One bad input. `inputs()` gives the forward's arguments (numpy) or, for `generate`,
    `{"input_ids": ..., "attention_mask": ..., **generation kwargs}`. `expect`: substrings the
    message must hold (argument, value or shape, limit; a tuple: any one of them). `traced`:
    the check also holds inside a caller's trace (it needs no values)."""

    name: str
    description: str
    inputs: Callable[[], dict]
    expect: tuple[str | tuple[str, ...], ...]
    generate: bool = False
    traced: bool = True
    error: type[BaseException] = ValueError


def _fwd(**kw) -> Callable[[], dict]:
    """Forward arguments: valid `input_ids` and `decoder_input_ids` unless given (None: left
    out), then `kw`."""
    base = {"input_ids": ids(vocab=ENC_VOCAB), "decoder_input_ids": ids(n=T)}
    return lambda: {k: v for k, v in {**base, **kw}.items() if v is not None}


def _lab(**kw) -> Callable[[], dict]:
    return _fwd(decoder_input_ids=None, **kw)


def _enc_out(width: int = HIDDEN, b: int = 3) -> tuple:
    return (np.zeros((b, S, width), np.float32),)


MASK = np.ones((B, S - 1), np.int64)
FORWARD_CASES = [
    Case("input_ids_above_vocab", "`input_ids` holds an id >= the encoder's vocab_size (99)",
         _fwd(input_ids=put(ids(vocab=ENC_VOCAB), (1, 3), ENC_VOCAB)),
         ("input_ids", "99", "(1, 3)", "[0, 99)"), traced=False),
    Case("input_ids_negative", "`input_ids` holds a negative id",
         _fwd(input_ids=put(ids(vocab=ENC_VOCAB), (0, 1), -1)),
         ("input_ids", "-1", "(0, 1)", "[0, 99)"), traced=False),
    Case("decoder_input_ids_above_vocab",
         "`decoder_input_ids` holds an id >= the decoder's vocab_size (77)",
         _fwd(decoder_input_ids=put(ids(n=T), (0, 2), 80)),
         ("decoder_input_ids", "80", "(0, 2)", "[0, 77)"), traced=False),
    Case("labels_negative", "`labels` holds -5 (only -100 is ignored)",
         _lab(labels=put(ids(n=T), (1, 0), -5)),
         ("labels", "-5", "(1, 0)", "[0, 77)", "-100"), traced=False),
    Case("labels_above_vocab", "`labels` holds an id >= the decoder's vocab_size",
         _lab(labels=put(ids(n=T), (0, 3), 77)), ("labels", "77", "(0, 3)", "[0, 77)"),
         traced=False),
    Case("input_ids_float", "`input_ids` are floats",
         _fwd(input_ids=ids(vocab=ENC_VOCAB).astype(np.float32)),
         ("input_ids", "integer", "float32")),
    Case("decoder_input_ids_float", "`decoder_input_ids` are floats",
         _fwd(decoder_input_ids=ids(n=T).astype(np.float32)),
         ("decoder_input_ids", "integer", "float32")),
    Case("input_ids_1d", "`input_ids` without a batch dimension",
         _fwd(input_ids=ids(vocab=ENC_VOCAB)[0]), ("input_ids", "(batch, length)", "(5,)")),
    Case("input_ids_too_long", "`input_ids` longer than the position table (16)",
         _fwd(input_ids=ids(n=POSITIONS + 1, vocab=ENC_VOCAB)),
         ("input_ids", "17 tokens", "serves 16", "max_position_embeddings=16")),
    Case("decoder_input_ids_too_long", "`decoder_input_ids` longer than the position table",
         _fwd(decoder_input_ids=ids(n=POSITIONS + 1)),
         ("decoder_input_ids", "17 tokens", "serves 16")),
    Case("labels_too_long", "`labels` (no `decoder_input_ids`) longer than the position table",
         _lab(labels=ids(n=POSITIONS + 1)), ("labels", "17 tokens", "serves 16")),
    Case("cache_too_long", "`decoder_input_ids` after 14 cached positions pass the table",
         _fwd(decoder_input_ids=ids(n=3), past_key_values=past(14)),
         ("decoder_input_ids", "3 tokens after 14 cached", "serves 16")),
    Case("attention_mask_shape", "`attention_mask` (2, 4) for `input_ids` (2, 5)",
         _fwd(attention_mask=MASK), ("attention_mask", "(2, 4)", "input_ids (2, 5)")),
    Case("decoder_attention_mask_shape",
         "`decoder_attention_mask` (2, 3) for `decoder_input_ids` (2, 4)",
         _fwd(decoder_attention_mask=np.ones((B, T - 1), np.int64)),
         ("decoder_attention_mask", "(2, 3)", "decoder_input_ids (2, 4)")),
    Case("labels_vs_decoder_attention_mask",
         "`labels` (2, 4) with a `decoder_attention_mask` (2, 5)",
         _lab(labels=ids(n=T), decoder_attention_mask=np.ones((B, T + 1), np.int64)),
         ("decoder_attention_mask", "(2, 5)", "labels (2, 4)")),
    Case("labels_vs_decoder_input_ids", "`labels` (2, 3) with `decoder_input_ids` (2, 4)",
         _fwd(labels=ids(n=T - 1)), ("labels", "(2, 3)", "decoder_input_ids (2, 4)")),
    Case("decoder_batch", "`decoder_input_ids` of batch 3 for `input_ids` of batch 2",
         _fwd(decoder_input_ids=ids(b=3, n=T)),
         ("decoder_input_ids", "batch size 3", "input_ids's 2")),
    Case("encoder_outputs_batch", "`encoder_outputs` of batch 3 for `decoder_input_ids` of "
         "batch 2", _fwd(input_ids=None, encoder_outputs=_enc_out()),
         ("decoder_input_ids", "batch size 2", "encoder_outputs's 3")),
    Case("encoder_outputs_vs_input_ids", "`encoder_outputs` of batch 3 with `input_ids` of "
         "batch 2", _fwd(encoder_outputs=_enc_out(), decoder_input_ids=ids(b=3, n=T)),
         ("input_ids", "batch size 2", "encoder_outputs's 3")),
    Case("encoder_outputs_width", "`encoder_outputs` 31 wide (hidden_size 32)",
         _fwd(input_ids=None, encoder_outputs=_enc_out(HIDDEN - 1, B)),
         ("encoder_outputs", "31", "hidden_size is 32")),
    Case("inputs_embeds_width", "`inputs_embeds` 16 wide (embeddings are 32)",
         _fwd(input_ids=None, inputs_embeds=np.zeros((B, S, 16), np.float32)),
         ("inputs_embeds", "16", "32 wide")),
    Case("empty_batch", "`input_ids` of shape (0, 5)",
         _fwd(input_ids=ids(b=0, vocab=ENC_VOCAB), decoder_input_ids=ids(b=0)),
         ("input_ids", "empty batch", "(0, 5)")),
    Case("empty_input_ids", "`input_ids` of shape (2, 0)",
         _fwd(input_ids=ids(n=0, vocab=ENC_VOCAB)), ("input_ids", "zero-length", "(2, 0)")),
    Case("empty_decoder_input_ids", "`decoder_input_ids` of shape (2, 0)",
         _fwd(decoder_input_ids=ids(n=0)), ("decoder_input_ids", "zero-length", "(2, 0)")),
    Case("empty_labels", "`labels` of shape (2, 0)", _lab(labels=ids(n=0)),
         ("labels", "zero-length", "(2, 0)")),
]


def _gen(**kw) -> Callable[[], dict]:
    return lambda: {"input_ids": ids(vocab=ENC_VOCAB), "max_new_tokens": 3, **kw}


GENERATE_CASES = [
    Case("generate_input_ids_above_vocab", "`input_ids` holds an id >= vocab_size",
         _gen(input_ids=put(ids(vocab=ENC_VOCAB), (1, 2), 150)),
         ("input_ids", "150", "(1, 2)", "[0, 99)")),
    Case("generate_input_ids_float", "`input_ids` are floats",
         _gen(input_ids=ids(vocab=ENC_VOCAB).astype(np.float32)),
         ("input_ids", "integer", "float32")),
    Case("generate_input_ids_too_long", "`input_ids` longer than the encoder's positions",
         _gen(input_ids=ids(n=POSITIONS + 1, vocab=ENC_VOCAB)),
         ("input_ids", "17 tokens", "serves 16")),
    Case("generate_attention_mask_shape", "`attention_mask` (2, 4) for `input_ids` (2, 5)",
         _gen(attention_mask=MASK), ("attention_mask", "(2, 4)", "input_ids (2, 5)")),
    Case("generate_empty_batch", "`input_ids` of shape (0, 5)",
         _gen(input_ids=ids(b=0, vocab=ENC_VOCAB)), ("input_ids", "empty batch", "(0, 5)")),
    Case("generate_empty_input", "`input_ids` of shape (2, 0)",
         _gen(input_ids=ids(n=0, vocab=ENC_VOCAB)), ("input_ids", "zero-length", "(2, 0)")),
    Case("max_new_tokens_too_many", "`max_new_tokens=20` past the decoder's 16 positions",
         _gen(max_new_tokens=20), ("max_length=21", "serves 16", "max_new_tokens")),
    Case("max_new_tokens_zero", "`max_new_tokens=0`", _gen(max_new_tokens=0),
         ("max_new_tokens", "0")),
    Case("max_new_tokens_negative", "`max_new_tokens=-1`", _gen(max_new_tokens=-1),
         ("max_new_tokens", "-1")),
    Case("num_return_sequences_above_beams", "`num_return_sequences=3` with `num_beams=2`",
         _gen(num_beams=2, num_return_sequences=3), ("num_return_sequences", "3", "num_beams",
                                                     "2")),
    Case("num_return_sequences_greedy", "`num_return_sequences=2` in greedy search",
         _gen(num_return_sequences=2), ("num_return_sequences", "2", "num_beams")),
    Case("num_beams_zero", "`num_beams=0`", _gen(num_beams=0),
         ("num_beams", "0", ("positive", "> 0", ">= 1"))),
    Case("top_p_zero", "`top_p=0.0` when sampling", _gen(do_sample=True, top_p=0.0),
         ("top_p", "0.0", "(0, 1]")),
    Case("top_p_above_one", "`top_p=1.5` when sampling", _gen(do_sample=True, top_p=1.5),
         ("top_p", "1.5", "(0, 1]")),
    Case("temperature_negative", "`temperature=-1.0` when sampling",
         _gen(do_sample=True, temperature=-1.0), ("temperature", "-1.0", "> 0")),
    Case("temperature_zero", "`temperature=0.0` when sampling",
         _gen(do_sample=True, temperature=0.0), ("temperature", "0.0", "> 0")),
    Case("top_k_negative", "`top_k=-1` when sampling", _gen(do_sample=True, top_k=-1),
         ("top_k", "-1", ">= 0")),
    Case("repetition_penalty_zero", "`repetition_penalty=0.0`", _gen(repetition_penalty=0.0),
         ("repetition_penalty", "0.0", "> 0")),
    Case("no_repeat_ngram_size_negative", "`no_repeat_ngram_size=-1`",
         _gen(no_repeat_ngram_size=-1), ("no_repeat_ngram_size", "-1", ">= 0")),
    Case("length_penalty_str", "`length_penalty='long'` in beam search",
         _gen(num_beams=2, length_penalty="long"), ("length_penalty", "'long'", "float")),
    Case("bad_words_ids_above_vocab", "`bad_words_ids=[[5], [200]]`",
         _gen(bad_words_ids=[[5], [200]]), ("bad_words_ids", "200", "[0, 77)")),
    Case("bad_words_ids_empty", "`bad_words_ids=[]`", _gen(bad_words_ids=[]),
         ("bad_words_ids", "[]", "non-empty")),
    Case("bad_words_ids_empty_entry", "`bad_words_ids=[[]]`", _gen(bad_words_ids=[[]]),
         ("bad_words_ids", "[[]]", "non-empty")),
    Case("forced_bos_token_id_above_vocab", "`forced_bos_token_id=200`",
         _gen(forced_bos_token_id=200), ("forced_bos_token_id", "200", "[0, 77)")),
    Case("forced_eos_token_id_above_vocab", "`forced_eos_token_id=200`",
         _gen(forced_eos_token_id=200), ("forced_eos_token_id", "200", "[0, 77)")),
    Case("decoder_start_token_id_above_vocab", "`decoder_start_token_id=200`",
         _gen(decoder_start_token_id=200), ("decoder_start_token_id", "200", "[0, 77)")),
    Case("pad_token_id_above_vocab", "`pad_token_id=200`", _gen(pad_token_id=200),
         ("pad_token_id", "200", "[0, 77)")),
    Case("eos_token_id_above_vocab", "`eos_token_id=200`", _gen(eos_token_id=200),
         ("eos_token_id", "200", "[0, 77)")),
    Case("eos_token_id_negative", "`eos_token_id=[3, -2]`", _gen(eos_token_id=[3, -2]),
         ("eos_token_id", "-2", "[0, 77)")),
]
GENERATE_CASES = [dataclasses.replace(c, generate=True) for c in GENERATE_CASES]
CASES = FORWARD_CASES + GENERATE_CASES


# --- running a case in a backend --------------------------------------------------------------

@functools.cache
def model(backend: str):
    """The tiny model of `backend` (random weights, eval mode), built once."""
    import importlib

    module = importlib.import_module(f"encdec.{backend}")
    m = module.EncoderDecoderModel(config=config())
    if backend == "pt":
        m.eval()
    return m


def _to(backend: str, x):
    """numpy (or nested tuples of it) -> the backend's tensors."""
    if isinstance(x, tuple):
        return tuple(_to(backend, y) for y in x)
    if not isinstance(x, np.ndarray):
        return x
    if backend == "pt":
        import torch

        return torch.from_numpy(x)
    if backend == "tf":
        import tensorflow as tf

        return tf.constant(x)
    import jax.numpy as jnp

    return jnp.asarray(x)


@functools.cache
def _compiled(backend: str):
    """The backend's compiled forward: tf.function(jit_compile=True) or nnx.jit."""
    m = model(backend)
    if backend == "tf":
        import tensorflow as tf

        return tf.function(lambda **kw: m(**kw).logits, jit_compile=True)
    from flax import nnx

    return nnx.jit(lambda mod, **kw: mod(**kw).logits)


def attempt(backend: str, case: Case, compiled: bool = False) -> BaseException | None:
    """Run `case` in `backend`; the exception it raised, or None."""
    inputs = {k: _to(backend, v) for k, v in case.inputs().items()}
    m = model(backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if case.generate:
                input_ids = inputs.pop("input_ids")
                m.generate(input_ids, inputs.pop("attention_mask", None), **inputs)
            elif not compiled:
                if backend == "pt":
                    import torch

                    with torch.no_grad():
                        m(**inputs)
                else:
                    m(**inputs)
            elif backend == "tf":
                _compiled(backend)(**inputs)
            else:
                _compiled(backend)(m, **inputs)
    except Exception as e:  # noqa: BLE001 - the error is what is measured
        return e
    return None


# --- the tests -----------------------------------------------------------------------------

def _check(e: BaseException | None, case: Case) -> None:
    assert e is not None, f"{case.name}: no error"
    assert isinstance(e, case.error), f"{case.name}: {type(e).__name__}: {e}"
    for s in case.expect:
        assert any(a in str(e) for a in ((s,) if isinstance(s, str) else s)), \
            f"{case.name}: {s!r} not in the message {str(e)!r}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_refused(backend, case):
    """Eager forward, and `generate` (tf, flax: their compiled programs)."""
    _check(attempt(backend, case), case)


COMPILED = [c for c in FORWARD_CASES if c.traced]


@pytest.mark.parametrize("backend", ("tf", "flax"))
@pytest.mark.parametrize("case", COMPILED, ids=lambda c: c.name)
def test_refused_in_a_trace(backend, case):
    """The model under tf.function(jit_compile=True) / nnx.jit: the checks that need no values
    (shapes, dtypes, lengths) still run, at trace time."""
    _check(attempt(backend, case, compiled=True), case)


# every invalid input stays fast in every backend; the valid ones: pt fast, tf and flax in CI
@pytest.mark.parametrize("backend", ["pt", *(pytest.param(b, marks=pytest.mark.slow)
                                            for b in ("tf", "flax"))])
def test_valid_inputs_still_run(backend):
    """The same model runs the well-formed inputs the cases start from (the errors come from
    the bad part alone), labels with -100 included."""
    good = Case("good", "", _lab(attention_mask=np.ones((B, S), np.int64),
                                 labels=put(ids(n=T), (0, 3), -100),
                                 decoder_attention_mask=np.ones((B, T), np.int64)), ())
    assert attempt(backend, good) is None
    gen = Case("good", "", _gen(num_beams=2, num_return_sequences=2, bad_words_ids=[[5]],
                                eos_token_id=3), (), generate=True)
    assert attempt(backend, gen) is None

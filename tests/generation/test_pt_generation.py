"""What only encdec.pt.generation has, against transformers' PyTorch `generate`: identical
tokens over the full grid of controls (one torch model per case is cheap; the compiled
backends run the shared subset in test_generation.py), the reference's samples under the same
torch seed, the sampling distribution, the static-cache decoding contract, and
generation-config handling."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from encdec.core import generation as G
from encdec.core.registry import architecture, max_positions
from encdec.pt import EncoderDecoderModel  # noqa: E402
from encdec.pt.generation import generate  # noqa: E402
from tests.conftest import PAIRS
from tests.generation import oracle


def ours(name: str, seed: int = 0) -> EncoderDecoderModel:
    """Our model loaded from the reference's checkpoint (cached per process)."""
    return _ours(name, seed)


@functools.lru_cache(maxsize=None)
def _ours(name: str, seed: int) -> EncoderDecoderModel:
    return EncoderDecoderModel.from_pretrained(oracle.checkpoint(name, seed))


def _generate(model, x, a, **kw):
    """Through `model.generate` when the model has it, else the module function."""
    fn = getattr(model, "generate", None) or functools.partial(generate, model)
    out = fn(torch.as_tensor(x), torch.as_tensor(a) if a is not None else None, **kw)
    return out.numpy() if isinstance(out, torch.Tensor) else out


def _ids(kw: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kw.items())


# --- identical tokens ------------------------------------------------------------------------

CASES = [
    dict(max_new_tokens=10),
    dict(),  # the model-agnostic default: 20 new tokens
    dict(max_length=7, min_length=4),
    dict(max_new_tokens=10, num_beams=2),
    dict(max_new_tokens=10, num_beams=4),
    dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, length_penalty=0.6),
    dict(max_new_tokens=10, num_beams=2, num_return_sequences=2, length_penalty=1.8),
    dict(max_new_tokens=10, num_beams=4, early_stopping=True),
    dict(max_new_tokens=10, num_beams=3, early_stopping="never", length_penalty=1.5),
    dict(max_new_tokens=10, num_beams=4, no_repeat_ngram_size=2, repetition_penalty=1.3),
    dict(max_new_tokens=10, no_repeat_ngram_size=3, repetition_penalty=1.5, min_new_tokens=6),
    dict(max_new_tokens=10, num_beams=2, min_new_tokens=5, length_penalty=0.5),
    dict(max_new_tokens=10, bad_words_ids=[[20], [36, 2], [31]], forced_bos_token_id=36,
         forced_eos_token_id=3),
    dict(max_new_tokens=10, num_beams=3, bad_words_ids=[[2]], forced_bos_token_id=11),
]


SLOW = pytest.mark.slow


def _params(cases: list[dict], slow: set[int]) -> list:
    """`cases` as parameters with their ids, those at the indices in `slow` marked slow."""
    return [pytest.param(kw, id=_ids(kw), marks=SLOW if i in slow else ())
            for i, kw in enumerate(cases)]


# The fast subset: bert2bert with early eos, and the cases that the numpy loop does not check
# against the reference (test_core_generation.py has 4 beams, several returned sequences,
# penalties, bad words and forced tokens); bert2gpt2, eos 3 and those: CI
NAMES = ["bert2bert", pytest.param("bert2gpt2", marks=SLOW)]


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default `max_length`")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("early_eos", [pytest.param(False, marks=SLOW), True],
                         ids=["eos3", "eos@2"])
@pytest.mark.parametrize("case", [pytest.param(i, id=_ids(kw), marks=SLOW if i in
                                               (4, 6, 11, 12, 13) else ())
                                  for i, kw in enumerate(CASES)])
def test_tokens_match_reference(name, early_eos, case):
    seed = case % 3  # every case runs on one of three weight seeds and input batches
    kw = CASES[case]
    ref_model = oracle.reference(name, seed)
    x, a = oracle.batch(seed)
    eos = oracle.eos_at_step(ref_model, x, a) if early_eos else 3
    got = _generate(ours(name, seed), x, a, eos_token_id=eos, **kw)
    np.testing.assert_array_equal(got, oracle.hf_generate(ref_model, x, a, eos_token_id=eos, **kw))


@pytest.mark.parametrize("kw", [dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=2)],
                         ids=_ids)
def test_several_eos_ids_and_no_mask(kw):
    ref_model = oracle.reference("bert2gpt2", 1)
    x, a = oracle.batch(1)
    seq = oracle.hf_generate(ref_model, x, a, max_new_tokens=4, eos_token_id=None)
    eos = [int(seq[1, 2]), int(seq[2, 3])]
    assert (x == 0).any()  # padded: without a mask the reference attends to the padding
    for mask in (a, None):
        want = oracle.hf_generate(ref_model, x, mask, eos_token_id=eos, **kw)
        np.testing.assert_array_equal(_generate(ours("bert2gpt2", 1), x, mask, eos_token_id=eos,
                                                **kw), want)


@pytest.mark.parametrize("name", [n for n, p in PAIRS.items()
                                  if architecture(p.decoder).family == "bart"])
def test_bart_family_position_limit(name):
    """A BART-family decoder serves `max_position_embeddings` tokens (BART's learned table has
    2 rows more, read from row 2): generating up to exactly the limit equals the reference;
    one token more is a ValueError naming the limit, before any step runs. (The limit's host
    checks, a decode step at the last position, in every backend:
    tests/harness/test_registry.py.)"""
    ref_model = oracle.reference(name)
    n = max_positions(oracle.core_config(ref_model).decoder)
    x, a = oracle.batch(0, name=name)
    got = _generate(ours(name), x, a, max_new_tokens=n - 1, eos_token_id=None)
    assert got.shape[1] == n
    np.testing.assert_array_equal(got, oracle.hf_generate(ref_model, x, a, max_new_tokens=n - 1,
                                                          eos_token_id=None))
    with pytest.raises(ValueError, match=rf"\b{n}\b"):
        _generate(ours(name), x, a, max_new_tokens=n, eos_token_id=None)


# --- sampling --------------------------------------------------------------------------------

SAMPLE_CASES = [
    dict(do_sample=True),
    dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, num_return_sequences=3),
    dict(do_sample=True, num_beams=3, top_p=0.8),
    dict(do_sample=True, num_beams=2, num_return_sequences=2, temperature=1.5,
         repetition_penalty=1.2),
]


@pytest.mark.parametrize("name", [*NAMES, "bert2pegasus"])
@pytest.mark.parametrize("kw", _params(SAMPLE_CASES, slow={1, 3}))  # the others: CI
def test_sampling_matches_reference_under_the_same_seed(name, kw):
    """Same torch global seed -> the reference's samples: same distributions, same RNG draws."""
    x, a = oracle.batch(0)
    model, ref_model = ours(name), oracle.reference(name)  # built before seeding
    for seed in range(3):
        torch.manual_seed(seed)
        got = _generate(model, x, a, max_new_tokens=10, **kw)
        torch.manual_seed(seed)
        np.testing.assert_array_equal(got, oracle.hf_generate(ref_model, x, a, max_new_tokens=10,
                                                              **kw))


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=2, num_return_sequences=2)], ids=_ids)
def test_sampling_is_reproducible(kw):
    x, a = oracle.batch(0)
    model = ours("bert2bert")
    kw = dict(kw, max_new_tokens=12, do_sample=True, top_k=0, temperature=1.3)
    first = _generate(model, x, a, seed=11, **kw)
    np.testing.assert_array_equal(_generate(model, x, a, seed=11, **kw), first)
    gen = torch.Generator().manual_seed(11)
    np.testing.assert_array_equal(_generate(model, x, a, generator=gen, **kw), first)
    others = [_generate(model, x, a, seed=s, **kw) for s in (12, 13)]
    assert any(o.shape != first.shape or (o != first).any() for o in others)


@pytest.mark.parametrize("kw", [dict(temperature=0.6), dict(top_k=7), dict(top_p=0.8),
                                dict(temperature=1.7, top_k=20, top_p=0.95)], ids=_ids)
def test_first_token_distribution(kw):
    """20000 draws of the first token (fixed seed): the total-variation distance to
    softmax(logits / T) restricted by top-k / top-p is within sampling noise, no token outside
    the restriction appears, and the unrestricted softmax is clearly rejected."""
    model, n = ours("bert2bert"), 20000
    x, a = (t[:1] for t in oracle.batch(0))
    p = G.plan(model.config, model.generation_config, max_new_tokens=1, do_sample=True, **kw)
    out = _generate(model, x, a, max_new_tokens=1, do_sample=True, num_return_sequences=n,
                    seed=0, **kw)
    logits = oracle.logits_fn(oracle.reference("bert2bert"), x, a, 1)(out[:1, :1])
    want = G.softmax(G.apply_processors(p.processors, out[:1, :1], logits))[0]
    got = np.bincount(out[:, 1], minlength=len(want)) / n
    assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want))
    bound = np.sqrt(np.count_nonzero(want) / n)  # E[TV] ~ 0.4 sqrt(support / n)
    assert 0.5 * np.abs(got - want).sum() < bound
    assert 0.5 * np.abs(got - G.softmax(logits)[0]).sum() > 2 * bound


# --- the decoding contract -------------------------------------------------------------------


@pytest.mark.parametrize("beams", [1, 4])
def test_encoder_once_and_cached_single_token_steps(beams, monkeypatch):
    model = ours("bert2gpt2")
    x, a = oracle.batch(0)
    calls, steps = [], []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    decode_step = model.decode_step

    def spy(ids, cache, index, mask, *rest):
        steps.append((tuple(ids.shape), index, [tuple(c[2].shape) for c in cache],
                      [c[2].data_ptr() for c in cache]))
        return decode_step(ids, cache, index, mask, *rest)

    monkeypatch.setattr(model, "decode_step", spy)
    try:
        out = _generate(model, x, a, max_new_tokens=9, num_beams=beams, eos_token_id=None)
    finally:
        model.encoder._forward_hooks.clear()
    assert len(calls) == 1
    assert [s[1] for s in steps] == list(range(9))  # one step per token, position by position
    assert all(s[0] == (len(x) * beams, 1) for s in steps)  # (B * beams, 1)
    assert all(shape[0] == len(x) for s in steps for shape in s[2])  # cross K/V at batch Be
    assert all(s[3] == steps[0][3] for s in steps)  # the same cross K/V tensors every step
    assert out.shape == (len(x), 10)


# --- generation config ---------------------------------------------------------------------


def test_model_generation_config_and_call_overrides(tmp_path):
    x, a = oracle.batch(1)
    ref_model = oracle.reference("bert2bert", 1)
    eos = oracle.eos_at_step(ref_model, x, a)
    model = EncoderDecoderModel.from_pretrained(oracle.checkpoint("bert2bert", 1))
    model.generation_config.update(num_beams=3, max_new_tokens=6, eos_token_id=eos,
                                   length_penalty=0.5)
    want = oracle.hf_generate(ref_model, x, a, num_beams=3, max_new_tokens=6, eos_token_id=eos,
                              length_penalty=0.5)
    np.testing.assert_array_equal(_generate(model, x, a), want)
    model.save_pretrained(tmp_path)  # generation_config.json round trip
    reloaded = EncoderDecoderModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(_generate(reloaded, x, a), want)
    # call overrides win over the model's generation config
    want = oracle.hf_generate(ref_model, x, a, num_beams=1, max_new_tokens=4, eos_token_id=eos)
    np.testing.assert_array_equal(_generate(reloaded, x, a, num_beams=1, max_new_tokens=4), want)
    with pytest.raises(TypeError, match="unknown generation arguments"):
        _generate(reloaded, x, a, beams=2)


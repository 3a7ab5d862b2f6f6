"""encdec.core.generation against transformers: call resolution (`plan`), each numpy logits
processor, and the numpy decoding loop (`generate_reference`) driven by transformers' model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers.generation.logits_process as lp

from encdec.core import generation as G
from encdec.core.config import BertConfig, EncoderDecoderConfig, GenerationConfig
from tests.generation import oracle


def _config(**kw) -> EncoderDecoderConfig:
    dec = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     bos_token_id=kw.pop("bos", None), eos_token_id=kw.pop("eos", None))
    return EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(), dec, **kw)


# --- plan -------------------------------------------------------------------------------------


def test_decoder_start_resolution_order():
    cfg = _config(decoder_start_token_id=5, bos=7)
    assert G.plan(cfg, max_new_tokens=2, decoder_start_token_id=9).decoder_start_token_id == 9
    gc = GenerationConfig(decoder_start_token_id=8)
    assert G.plan(cfg, gc, max_new_tokens=2).decoder_start_token_id == 8
    assert G.plan(cfg, GenerationConfig(), max_new_tokens=2).decoder_start_token_id == 5
    assert G.plan(_config(bos=7), GenerationConfig(), max_new_tokens=2).decoder_start_token_id == 7
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        G.plan(_config(), GenerationConfig(), max_new_tokens=2)


def test_special_ids():
    cfg = _config(decoder_start_token_id=2)
    p = G.plan(cfg, GenerationConfig(eos_token_id=[4, 6]), max_new_tokens=3)
    assert p.eos_token_ids == (4, 6) and p.pad_token_id == 4  # pad falls back to eos[0]
    assert p.beam_fill_token_id == 4
    p = G.plan(cfg, GenerationConfig(eos_token_id=4, pad_token_id=0), max_new_tokens=3)
    assert p.eos_token_ids == (4,) and p.pad_token_id == 0
    assert p.beam_fill_token_id == 4  # the reference's `pad or eos[0]`: a pad id of 0 is falsy
    assert G.plan(cfg, GenerationConfig(eos_token_id=4, pad_token_id=1),
                  max_new_tokens=3).beam_fill_token_id == 1
    p = G.plan(cfg, GenerationConfig(), max_new_tokens=3)
    assert p.eos_token_ids == () and p.pad_token_id is None and p.beam_fill_token_id == -1


def test_lengths():
    cfg = _config(decoder_start_token_id=2)
    p = G.plan(cfg, max_new_tokens=7, max_length=3)
    assert (p.max_length, p.max_new_tokens) == (8, 7)  # max_new_tokens wins
    assert G.plan(cfg, max_length=5).max_length == 5  # counts the start token
    with pytest.warns(UserWarning, match="default `max_length`"):
        assert G.plan(cfg).max_length == 21  # 20 new tokens, as the reference
    assert G.plan(cfg, max_new_tokens=5, min_new_tokens=3).min_length == 4
    assert G.plan(cfg, max_new_tokens=5, min_length=3).min_length == 3
    with pytest.raises(ValueError, match="max_length"):
        G.plan(cfg, max_length=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        G.plan(cfg, max_new_tokens=0)
    with pytest.warns(UserWarning, match="Unfeasible length"):
        G.plan(cfg, max_new_tokens=3, min_new_tokens=5)


def test_strategy_and_validation():
    cfg = _config(decoder_start_token_id=2)
    S = G.Strategy
    cases = [({}, S.GREEDY), ({"do_sample": True}, S.SAMPLE), ({"num_beams": 3}, S.BEAM),
             ({"num_beams": 3, "do_sample": True}, S.BEAM_SAMPLE)]
    for kw, want in cases:
        assert G.plan(cfg, max_new_tokens=2, **kw).strategy is want
    p = G.plan(cfg, max_new_tokens=2, num_beams=3, num_return_sequences=2, eos_token_id=[3, 4])
    assert (p.expand_size, p.beams_to_keep) == (3, 9)
    assert G.plan(cfg, max_new_tokens=2, do_sample=True, num_return_sequences=4).expand_size == 4
    with pytest.raises(ValueError, match="num_return_sequences"):
        G.plan(cfg, max_new_tokens=2, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="num_return_sequences"):
        G.plan(cfg, max_new_tokens=2, num_return_sequences=2)
    with pytest.raises(ValueError, match="early_stopping"):
        G.plan(cfg, max_new_tokens=2, early_stopping="sometimes")
    with pytest.raises(ValueError, match="bad_words_ids"):
        G.plan(cfg, max_new_tokens=2, bad_words_ids=[[-1]])
    with pytest.raises(TypeError, match="unknown generation arguments"):
        G.plan(cfg, max_new_tokens=2, num_beam=2)


PROCESSOR_CASES = [
    dict(repetition_penalty=1.3, no_repeat_ngram_size=2, bad_words_ids=[[3], [5], [6, 7]],
         min_new_tokens=2, forced_bos_token_id=9, forced_eos_token_id=[3, 4]),
    dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_length=3),
    dict(do_sample=True, num_beams=3, top_k=1, top_p=0.5, eos_token_id=[3, 4]),
    dict(do_sample=True, num_beams=2, temperature=1.0, eos_token_id=None),
    dict(num_beams=2, top_k=5, temperature=0.5),  # warpers are for sampling only
]


def _as_spec(proc) -> object:
    """A transformers processor -> our spec (for comparing plan's list with the reference's)."""
    name = type(proc).__name__
    eos = tuple(int(i) for i in getattr(proc, "eos_token_id", torch.tensor([])).tolist())
    return {
        "RepetitionPenaltyLogitsProcessor": lambda: G.RepetitionPenalty(proc.penalty),
        "NoRepeatNGramLogitsProcessor": lambda: G.NoRepeatNGram(proc.ngram_size),
        "NoBadWordsLogitsProcessor": lambda: G.BadWords(tuple(proc.sequence_bias)),
        "MinLengthLogitsProcessor": lambda: G.MinLength(proc.min_length, eos),
        "MinNewTokensLengthLogitsProcessor": lambda: G.MinLength(
            proc.min_new_tokens + proc.prompt_length_to_skip, eos),
        "ForcedBOSTokenLogitsProcessor": lambda: G.ForcedBOS(proc.bos_token_id),
        "ForcedEOSTokenLogitsProcessor": lambda: G.ForcedEOS(proc.max_length, eos),
        "TemperatureLogitsWarper": lambda: G.Temperature(proc.temperature),
        "TopKLogitsWarper": lambda: G.TopK(proc.top_k),
        "TopPLogitsWarper": lambda: G.TopP(proc.top_p, proc.min_tokens_to_keep),
    }[name]()


@pytest.mark.parametrize("kw", PROCESSOR_CASES)
def test_processor_list_matches_reference(kw, monkeypatch):
    model = oracle.reference("bert2bert")
    captured = []
    original = type(model)._get_logits_processor

    def spy(self, *a, **k):
        captured.append(original(self, *a, **k))
        return captured[-1]

    monkeypatch.setattr(type(model), "_get_logits_processor", spy)
    x, a = oracle.batch()
    oracle.hf_generate(model, x, a, max_new_tokens=4, **kw)
    want = []
    for spec in map(_as_spec, captured[0]):  # MinLength + MinNewTokens: one rule for us
        if not (want and isinstance(spec, G.MinLength) and want[-1] == spec):
            want.append(spec)
    assert G.plan(oracle.core_config(model), None, max_new_tokens=4, **kw).processors == tuple(want)


# --- numpy processors vs transformers' ------------------------------------------------------


def _reference_processor(spec, n_eos_keep: int = 1):
    return {
        G.RepetitionPenalty: lambda s: lp.RepetitionPenaltyLogitsProcessor(s.penalty),
        G.NoRepeatNGram: lambda s: lp.NoRepeatNGramLogitsProcessor(s.size),
        G.BadWords: lambda s: lp.NoBadWordsLogitsProcessor([list(w) for w in s.ids]),
        G.MinLength: lambda s: lp.MinLengthLogitsProcessor(s.min_length, list(s.eos_token_ids)),
        G.ForcedBOS: lambda s: lp.ForcedBOSTokenLogitsProcessor(s.token_id),
        G.ForcedEOS: lambda s: lp.ForcedEOSTokenLogitsProcessor(s.max_length, list(s.token_ids)),
        G.Temperature: lambda s: lp.TemperatureLogitsWarper(s.temperature),
        G.TopK: lambda s: lp.TopKLogitsWarper(s.k),
        G.TopP: lambda s: lp.TopPLogitsWarper(s.p, min_tokens_to_keep=s.min_tokens_to_keep),
    }[type(spec)](spec)


SPECS = [G.RepetitionPenalty(1.5), G.RepetitionPenalty(0.6), G.NoRepeatNGram(1),
         G.NoRepeatNGram(2), G.NoRepeatNGram(3), G.BadWords(((3,), (5, 6), (7, 8, 9), (1, 2))),
         G.MinLength(4, (3, 5)), G.MinLength(2, (3,)), G.ForcedBOS(7), G.ForcedEOS(5, (3, 4)),
         G.ForcedEOS(4, (3,)), G.Temperature(0.7), G.TopK(1), G.TopK(4), G.TopP(0.8, 1),
         G.TopP(0.3, 3), G.TopP(0.0001, 1)]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("cur_len", [1, 3, 6])
def test_numpy_processor_matches_reference(spec, cur_len):
    rng = np.random.default_rng(cur_len)
    v, n = 12, 5
    ids = rng.integers(0, 10, (n, cur_len))
    ids[1, -3:] = [5, 6, 5][-cur_len:]
    ids[2, -2:] = [7, 8][-cur_len:]
    ids[3] = ids[3, :1]  # a row of one repeated token: every n-gram repeats
    scores = rng.normal(size=(n, v)).astype(np.float32) * 3
    scores[4, :4] = scores[4, 0]  # ties
    ours = G.apply_processors([spec], ids, scores)
    ref = _reference_processor(spec)(torch.as_tensor(ids), torch.as_tensor(scores)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_no_processors_is_identity():
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    np.testing.assert_array_equal(G.apply_processors((), np.zeros((2, 1), np.int64), x), x)


# --- the numpy loop vs transformers' generate ----------------------------------------------

LOOP_CASES = [
    dict(max_new_tokens=9),
    dict(max_new_tokens=9, num_beams=2),
    dict(max_new_tokens=9, num_beams=4, num_return_sequences=2, length_penalty=0.6),
    dict(max_new_tokens=9, num_beams=3, early_stopping=True, length_penalty=1.5),
    dict(max_new_tokens=9, num_beams=3, early_stopping="never", length_penalty=2.0),
    dict(max_new_tokens=9, num_beams=2, no_repeat_ngram_size=2, repetition_penalty=1.4,
         min_new_tokens=4),
    dict(max_new_tokens=9, repetition_penalty=0.8, bad_words_ids=[[20], [31, 2]],
         forced_bos_token_id=36, forced_eos_token_id=3),
]


SLOW = pytest.mark.slow


# The fast subset: bert2bert with early eos, greedy and two beam settings (several returned
# sequences; penalties with min length); the same loop on the other cases: CI
@pytest.mark.parametrize("name, seed", [("bert2bert", 0),
                                        pytest.param("bert2gpt2", 1, marks=SLOW)])
@pytest.mark.parametrize("early_eos", [pytest.param(False, marks=SLOW), True],
                         ids=["eos3", "eos@2"])
@pytest.mark.parametrize("kw", [
    pytest.param(kw, id=",".join(f"{k}={v}" for k, v in kw.items()),
                 marks=SLOW if i in (1, 3, 4, 6) else ()) for i, kw in enumerate(LOOP_CASES)])
def test_numpy_loop_matches_reference(name, seed, early_eos, kw):
    model = oracle.reference(name, seed)
    x, a = oracle.batch(seed)
    eos = oracle.eos_at_step(model, x, a) if early_eos else 3
    p = G.plan(oracle.core_config(model), None, eos_token_id=eos, **kw)
    ours = G.generate_reference(p, oracle.logits_fn(model, x, a, p.expand_size), len(x))
    ref = oracle.hf_generate(model, x, a, eos_token_id=eos, **kw)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("kw", [dict(max_new_tokens=6), dict(max_new_tokens=6, num_beams=3,
                                                             num_return_sequences=2)])
def test_numpy_loop_scores_match_reference(kw):
    model = oracle.reference("bert2gpt2")
    x, a = oracle.batch(2)
    eos = oracle.eos_at_step(model, x, a)
    kw = dict(kw, eos_token_id=eos, return_dict_in_generate=True, output_scores=True)
    p = G.plan(oracle.core_config(model), None, **kw)
    ours = G.generate_reference(p, oracle.logits_fn(model, x, a, p.expand_size), len(x))
    ref = oracle.hf_generate(model, x, a, **kw)
    assert set(ours) == set(ref)
    np.testing.assert_array_equal(ours.sequences, ref["sequences"])
    assert len(ours.scores) == len(ref["scores"])
    for s, r in zip(ours.scores, ref["scores"], strict=True):
        np.testing.assert_allclose(s, r, rtol=0, atol=1e-5)
    if p.is_beam:
        np.testing.assert_allclose(ours.sequences_scores, ref["sequences_scores"], atol=1e-5)
        np.testing.assert_array_equal(ours.beam_indices, ref["beam_indices"])


def test_numpy_sampling_follows_the_processed_distribution():
    """One step of sampling, many rows: the empirical distribution is softmax(processed)."""
    cfg = _config(decoder_start_token_id=2)
    p = G.plan(cfg, max_new_tokens=1, do_sample=True, temperature=0.8, top_k=6, top_p=0.9,
               num_return_sequences=4000)
    logits = np.random.default_rng(0).normal(size=99).astype(np.float32) * 2
    out = G.generate_reference(p, lambda ids: np.tile(logits, (len(ids), 1)), 1,
                               rng=np.random.default_rng(0))
    want = G.softmax(G.apply_processors(p.processors, out[:1, :1], logits[None]))[0]
    got = np.bincount(out[:, 1], minlength=99) / len(out)
    assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want))
    assert 0.5 * np.abs(got - want).sum() < 0.03

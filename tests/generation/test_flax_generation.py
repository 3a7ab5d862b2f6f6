"""encdec.flax.generation against transformers' PyTorch `generate` (the oracle) on the same
weights: identical tokens for greedy and beam search with every control, scores within 1e-5,
the processors against encdec.core's numpy spec, reproducible sampling, and one trace per
input-length bucket."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest
import torch

from encdec.core import generation as core  # noqa: E402
from encdec.flax import EncoderDecoderModel  # noqa: E402
from encdec.flax import generation as G  # noqa: E402
from tests.generation import oracle  # noqa: E402

SEEDS = (0, 1)
NEW = 10  # new tokens per call


reference = oracle.reference


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """ours(name, seed) -> our model loaded from the reference's saved checkpoint."""

    @functools.cache
    def load(name: str, seed: int):
        d = tmp_path_factory.mktemp(f"{name}-{seed}")
        reference(name, seed).save_pretrained(d)
        return EncoderDecoderModel.from_pretrained(d)

    return load


@functools.cache
def eos_ids(name: str) -> list[int]:
    """The token the reference's greedy search emits third for example 0, per seed: used as
    eos ids so that some rows stop early and others run to max_length."""
    ids = set()
    for seed in SEEDS:
        seqs = oracle.hf_generate(reference(name, seed), *oracle.batch(seed), max_new_tokens=4,
                                  eos_token_id=None)
        ids.add(int(seqs[0, 3]))
    return sorted(ids)


def assert_same(got, want) -> None:
    """Tokens identical; scores (processed, per step) and beam scores within 1e-5."""
    if not isinstance(want, dict):
        np.testing.assert_array_equal(np.asarray(got), want)
        return
    assert set(got) == set(want), (set(got), set(want))
    np.testing.assert_array_equal(np.asarray(got["sequences"]), want["sequences"])
    if "scores" in want:
        for a, b in zip(got["scores"], want["scores"], strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-5)
    if "sequences_scores" in want:
        np.testing.assert_allclose(np.asarray(got["sequences_scores"]), want["sequences_scores"],
                                   rtol=0, atol=1e-5)
    if "beam_indices" in want:
        np.testing.assert_array_equal(np.asarray(got["beam_indices"]), want["beam_indices"])


def check(ours, name: str, seeds=SEEDS, generation_config=None, **kw) -> list:
    """Generate with ours and with the oracle on each seed's padded batch; compare."""
    wants = []
    for seed in seeds:
        ids, mask = oracle.batch(seed)
        model = ours(name, seed)
        gc = generation_config(model) if generation_config else None
        got = G.generate(model, ids, mask, generation_config=gc, **kw)
        hf_kw = dict(kw, eos_token_id=None) if gc is not None and gc.eos_token_id is None else kw
        want = oracle.hf_generate(reference(name, seed), ids, mask, **hf_kw)
        assert_same(got, want)
        wants.append(want)
    return wants


def _sequences(out) -> np.ndarray:
    return np.array(out["sequences"] if isinstance(out, dict) else out)  # writable, for torch


# --- greedy and beam search against the oracle ------------------------------------------------


@pytest.mark.parametrize("name", oracle.NAMES)
def test_greedy_against_hf(ours, name):
    eos = eos_ids(name)
    wants = check(ours, name, max_new_tokens=NEW, eos_token_id=eos, return_dict_in_generate=True,
                  output_scores=True)
    stopped = np.concatenate([np.isin(w["sequences"][:, 1:], eos).any(1) for w in wants])
    assert stopped.any() and not stopped.all()  # early eos in some rows, max_length in others


BEAMS = {
    "2 beams": dict(num_beams=2),
    "4 beams, 2 returned, length_penalty 0.6, early_stopping": dict(
        num_beams=4, num_return_sequences=2, length_penalty=0.6, early_stopping=True),
}


@pytest.mark.parametrize("beam", BEAMS)
@pytest.mark.parametrize("name", oracle.NAMES)
def test_beam_search_against_hf(ours, name, beam):
    check(ours, name, max_new_tokens=NEW, eos_token_id=eos_ids(name),
          return_dict_in_generate=True, output_scores=True, **BEAMS[beam])


@pytest.mark.parametrize("name", oracle.NAMES)
def test_beam_search_without_eos(ours, name):
    """The reference's Flax beam search crashes without an eos id; ours runs to max_length."""
    no_eos = lambda model: dataclasses.replace(model.generation_config, eos_token_id=None)  # noqa: E731
    check(ours, name, generation_config=no_eos, max_new_tokens=6, num_beams=3,
          length_penalty=2.0, early_stopping="never")


def test_processors_against_hf(ours):
    eos = eos_ids("bert2bert")
    check(ours, "bert2bert", max_new_tokens=NEW, eos_token_id=eos, repetition_penalty=1.5,
          no_repeat_ngram_size=2, min_new_tokens=5, bad_words_ids=[[85], [67, 41], [8, 8]])
    check(ours, "bert2bert", max_new_tokens=NEW, eos_token_id=eos, num_beams=2,
          repetition_penalty=0.7, no_repeat_ngram_size=3, min_new_tokens=4,
          forced_bos_token_id=7, forced_eos_token_id=eos[0])


# --- processors against the core's numpy spec ---------------------------------------------------


PROCESSORS = {
    "logits": (core.RepetitionPenalty(1.3), core.NoRepeatNGram(2),
               core.BadWords(((4,), (1, 2), (3, 1, 2))), core.MinLength(6, (3, 5)),
               core.ForcedEOS(11, (3, 5))),
    "forced bos": (core.ForcedBOS(7),),
    "warpers": (core.Temperature(0.7), core.TopK(20), core.TopP(0.8, 2)),
}


@pytest.mark.parametrize("which", PROCESSORS)
def test_processors_match_core(which):
    specs = PROCESSORS[which]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, (5, 12)).astype(np.int32)  # few distinct ids: n-grams repeat
    x = (rng.normal(size=(5, 99)) * 3).astype(np.float32)
    run = jax.jit(functools.partial(G.apply_processors, specs))
    for cur_len in (1, 2, 5, 10, 12):
        want = core.apply_processors(specs, ids[:, :cur_len].astype(np.int64), x)
        got = np.asarray(run(ids, np.int32(cur_len), x))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# --- sampling ---------------------------------------------------------------------------------


def test_sampling_reproducible_and_processed(ours):
    model = ours("bert2bert", 0)
    ids, mask = oracle.batch(0)
    kw = dict(do_sample=True, max_new_tokens=NEW, temperature=0.8, top_k=20, top_p=0.9,
              num_return_sequences=2, eos_token_id=eos_ids("bert2bert"),
              return_dict_in_generate=True, output_scores=True)
    out = G.generate(model, ids, mask, rng=jax.random.key(7), **kw)
    again = G.generate(model, ids, mask, rng=jax.random.key(7), **kw)
    other = G.generate(model, ids, mask, rng=jax.random.key(8), **kw)
    seqs = _sequences(out)
    assert seqs.shape[0] == 6 and (seqs[:, 0] == 2).all()
    np.testing.assert_array_equal(_sequences(again), seqs)
    assert not np.array_equal(_sequences(other), seqs)
    # each step's scores are the core processors applied to the reference's logits, and every
    # token sampled by an unfinished row was allowed by them
    p = core.plan(model.config, model.generation_config, **kw)
    logits = oracle.logits_fn(reference("bert2bert", 0), ids, mask, p.expand_size)
    for t, step_scores in enumerate(out["scores"], start=1):
        want = core.apply_processors(p.processors, seqs[:, :t], logits(seqs[:, :t]))
        np.testing.assert_allclose(np.asarray(step_scores), want, rtol=0, atol=1e-5)
        running = ~np.isin(seqs[:, 1:t], p.eos_token_ids).any(1)
        assert np.isfinite(want[np.arange(len(seqs)), seqs[:, t]][running]).all()


def test_top_k_1_sampling_is_greedy(ours):
    ids, mask = oracle.batch(1)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos_ids("bert2bert"))
    got = G.generate(ours("bert2bert", 1), ids, mask, do_sample=True, top_k=1,
                     rng=jax.random.key(3), **kw)
    np.testing.assert_array_equal(np.asarray(got),
                                  oracle.hf_generate(reference("bert2bert", 1), ids, mask, **kw))


def test_beam_sampling_reproducible(ours):
    model = ours("bert2gpt2", 0)
    ids, mask = oracle.batch(0)
    kw = dict(do_sample=True, num_beams=2, max_new_tokens=NEW, eos_token_id=eos_ids("bert2gpt2"))
    out = np.asarray(G.generate(model, ids, mask, rng=jax.random.key(5), **kw))
    np.testing.assert_array_equal(
        np.asarray(G.generate(model, ids, mask, rng=jax.random.key(5), **kw)), out)
    assert out.shape[0] == 3 and out.shape[1] <= NEW + 1 and (out[:, 0] == 2).all()


# --- compilation --------------------------------------------------------------------------------


def test_one_trace_per_length_bucket(ours):
    """Source lengths inside one bucket reuse the compiled program; the tokens stay right."""
    model, ref = ours("bert2bert", 0), reference("bert2bert", 0)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos_ids("bert2bert"))

    def run(src_len: int) -> None:
        ids, mask = oracle.batch(0, src_len=src_len)
        np.testing.assert_array_equal(np.asarray(G.generate(model, ids, mask, **kw)),
                                      oracle.hf_generate(ref, ids, mask, **kw))

    run(5)
    before = G.TRACES["greedy_search"]
    for src_len in (7, 12, 16):  # bucket 16
        run(src_len)
    assert G.TRACES["greedy_search"] == before
    run(17)  # bucket 32: one new program
    run(30)
    assert G.TRACES["greedy_search"] == before + 1
    # another model of the same architecture shares the program (weights are an argument)
    ids, mask = oracle.batch(1, src_len=12)
    np.testing.assert_array_equal(np.asarray(G.generate(ours("bert2bert", 1), ids, mask, **kw)),
                                  oracle.hf_generate(reference("bert2bert", 1), ids, mask, **kw))
    assert G.TRACES["greedy_search"] == before + 1


def test_no_mask_and_position_limit(ours):
    """Without attention_mask every source position is attended, as in the reference (which
    infers no mask for encoder-decoders), the bucket's padding excepted; a max_length beyond the
    decoder's positions is refused (XLA would clamp it silently)."""
    model, ref = ours("bert2bert", 0), reference("bert2bert", 0)
    ids, _ = oracle.batch(0)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos_ids("bert2bert"))
    with torch.no_grad():
        want = ref.generate(torch.as_tensor(ids), **kw).numpy()
    np.testing.assert_array_equal(np.asarray(G.generate(model, ids, **kw)), want)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        G.generate(model, ids, max_new_tokens=64)

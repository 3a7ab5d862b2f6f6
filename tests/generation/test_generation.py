"""Every backend's `generate` against transformers' PyTorch `generate` (the oracle) on the same
weights, written once and parametrised over backends: identical tokens for greedy and beam
search with every control, scores within tests/tolerances.py, reproducible sampling whose
scores are the core's processors, no mask; for the compiled backends, the
processors against encdec.core's numpy spec and one trace per input-length bucket.
(Backend-specific checks: test_pt_generation.py.)"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import numpy as np
import pytest

from encdec.core import generation as core
from tests import tolerances as tol
from tests.generation import oracle
from tests.harness.backends import ADAPTERS

SLOW = pytest.mark.slow
# The fast subset runs pt (the cheapest backend to check a rule in); tf and flax: CI, but for
# their compiled processors (test_processors_match_core) and greedy + 4-beam tokens of every
# fast pair (tests/harness/test_architectures.py)
BACKENDS = ["pt", pytest.param("tf", marks=SLOW), pytest.param("flax", marks=SLOW)]
# Each generate setting compiles its own program in tf and flax (the plan is part of the
# program), so a setting runs on one pair, not on every pair: the settings' code (processors,
# stopping, beam bookkeeping) does not depend on the decoder, and every pair's decoder is
# checked with greedy and 4-beam tokens in every backend by tests/harness/test_architectures.py
# and with beam scores here (bert2gpt2: test_beam_search_against_hf).
COMPILED = ["tf", "flax"]  # XLA-compiled loops: programs traced per input-length bucket
SEEDS = (0, 1)
NEW = 10  # new tokens per call

reference = oracle.reference


def generation(backend: str):
    """The backend's generation module (`generate`, `apply_processors`, `TRACES`)."""
    return importlib.import_module(f"encdec.{backend}.generation")


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """ours(backend, name, seed) -> the backend's model of `name` holding the reference's
    weights of `seed`. TF keeps one Keras model per architecture and loads each seed's weights
    into it: its compiled programs read the model's variables, so they are traced once."""
    adapters = {}

    def adapter(backend: str):
        if backend not in adapters:
            adapters[backend] = ADAPTERS[backend]()
        return adapters[backend]

    @functools.cache
    def load(backend: str, name: str, seed: int):
        return adapter(backend).load(oracle.checkpoint(name, seed))

    @functools.cache
    def tf_weights(name: str, seed: int) -> list[np.ndarray]:
        return load("tf", name, seed).get_weights()

    def get(backend: str, name: str, seed: int):
        if backend != "tf":
            return load(backend, name, seed)
        model = load("tf", name, SEEDS[0])
        model.set_weights(tf_weights(name, seed))
        return model

    return get


@functools.cache
def eos_ids(name: str) -> list[int]:
    """The token the reference's greedy search emits third for example 0, per seed: used as
    eos ids so that some rows stop early and others run to max_length."""
    ids = set()
    for seed in SEEDS:
        seqs = oracle.hf_generate(reference(name, seed), *oracle.batch(seed, name=name),
                                  max_new_tokens=4,
                                  eos_token_id=None)
        ids.add(int(seqs[0, 3]))
    return sorted(ids)


def sequences(out) -> np.ndarray:
    seqs = out["sequences"] if isinstance(out, dict) else out
    return np.asarray(seqs).copy()  # writable, for torch


def assert_same(got, want) -> None:
    """Tokens identical; scores (processed, per step) and beam scores within tol.SCORES."""
    if not isinstance(want, dict):
        np.testing.assert_array_equal(sequences(got), want)
        return
    assert set(got) == set(want), (set(got), set(want))
    np.testing.assert_array_equal(sequences(got), want["sequences"])
    if "scores" in want:
        tol.assert_close(tuple(np.asarray(s) for s in got["scores"]), want["scores"],
                         tol.SCORES, "scores")
    if "sequences_scores" in want:
        tol.assert_close(np.asarray(got["sequences_scores"]), want["sequences_scores"],
                         tol.SCORES, "sequences_scores")
    if "beam_indices" in want:
        np.testing.assert_array_equal(np.asarray(got["beam_indices"]), want["beam_indices"])


def check(ours, backend: str, name: str, seeds=SEEDS, generation_config=None, **kw) -> list:
    """Generate with ours and with the oracle on each seed's padded batch; compare."""
    generate, wants = generation(backend).generate, []
    for seed in seeds:
        ids, mask = oracle.batch(seed, name=name)
        model = ours(backend, name, seed)
        gc = generation_config(model) if generation_config else None
        got = generate(model, ids, mask, generation_config=gc, **kw)
        hf_kw = dict(kw, eos_token_id=None) if gc is not None and gc.eos_token_id is None else kw
        want = oracle.hf_generate(reference(name, seed), ids, mask, **hf_kw)
        assert_same(got, want)
        wants.append(want)
    return wants


# --- greedy and beam search against the oracle ------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_against_hf(ours, backend):
    name = "bert2bert"
    eos = eos_ids(name)
    wants = check(ours, backend, name, max_new_tokens=NEW, eos_token_id=eos,
                  return_dict_in_generate=True, output_scores=True)
    stopped = np.concatenate([np.isin(w["sequences"][:, 1:], eos).any(1) for w in wants])
    assert stopped.any() and not stopped.all()  # early eos in some rows, max_length in others


BEAMS = {
    "2beams": dict(num_beams=2),
    "4beams-2returned-lp0.6-early": dict(
        num_beams=4, num_return_sequences=2, length_penalty=0.6, early_stopping=True),
}


@SLOW  # CI: 4-beam tokens of every pair in every backend: test_architectures.py
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, beam", [("bert2bert", "2beams"),
                                        ("bert2gpt2", "4beams-2returned-lp0.6-early")])
def test_beam_search_against_hf(ours, backend, name, beam):
    """Tokens, per-step scores, sequence scores and beam indices; the 4-beam setting on GPT-2's
    decoder (its cache reordered by beam), the 2-beam one on BERT's (both settings are the
    same beam code for every decoder)."""
    check(ours, backend, name, max_new_tokens=NEW, eos_token_id=eos_ids(name),
          return_dict_in_generate=True, output_scores=True, **BEAMS[beam])


@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_search_without_eos(ours, backend):
    """The reference's Flax beam search crashed without an eos id; ours runs to max_length.
    (The stopping rule is the beam loop's, the same for every decoder.)"""
    name = "bert2bert"

    def no_eos(model):
        return dataclasses.replace(model.generation_config, eos_token_id=None)

    check(ours, backend, name, generation_config=no_eos, max_new_tokens=6, num_beams=3,
          length_penalty=2.0, early_stopping="never")


PROCESSOR_SETTINGS = {  # eos ids of the pair -> generate settings
    "greedy": lambda eos: dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=5,
                               bad_words_ids=[[85], [67, 41], [8, 8]]),
    "2beams-forced": lambda eos: dict(num_beams=2, repetition_penalty=0.7,
                                      no_repeat_ngram_size=3, min_new_tokens=4,
                                      forced_bos_token_id=7, forced_eos_token_id=eos[0]),
    "4beams": lambda eos: dict(num_beams=4, no_repeat_ngram_size=2, repetition_penalty=1.3,
                               length_penalty=0.8, bad_words_ids=[[85]]),
}


@SLOW  # CI: each processor against the reference: test_core_generation.py; in the compiled
# loops: test_processors_match_core; pt's combinations: test_pt_generation.py
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, setting", [("bert2bert", "4beams"), ("bert2bart", "greedy"),
                                           ("bert2bart", "2beams-forced")])
def test_processors_against_hf(ours, backend, name, setting):
    """Greedy and beam search (2 and 4 beams) with logits processors, each setting on one
    decoder family and beam search with processors on both (the processors act on the logits,
    the same code for every decoder)."""
    eos = eos_ids(name)
    check(ours, backend, name, max_new_tokens=NEW, eos_token_id=eos,
          **PROCESSOR_SETTINGS[setting](eos))


# --- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_reproducible_and_processed(ours, backend):
    generate, model = generation(backend).generate, ours(backend, "bert2bert", 0)
    ids, mask = oracle.batch(0)
    kw = dict(do_sample=True, max_new_tokens=NEW, temperature=0.8, top_k=20, top_p=0.9,
              num_return_sequences=2, eos_token_id=eos_ids("bert2bert"),
              return_dict_in_generate=True, output_scores=True)
    out = generate(model, ids, mask, seed=7, **kw)
    again = generate(model, ids, mask, seed=7, **kw)
    other = generate(model, ids, mask, seed=8, **kw)
    seqs = sequences(out)
    assert seqs.shape[0] == 6 and (seqs[:, 0] == 2).all()
    np.testing.assert_array_equal(sequences(again), seqs)
    assert not np.array_equal(sequences(other), seqs)
    # each step's scores are the core processors applied to the reference's logits, and every
    # token sampled by an unfinished row was allowed by them
    p = core.plan(model.config, model.generation_config, **kw)
    logits = oracle.logits_fn(reference("bert2bert", 0), ids, mask, p.expand_size)
    for t, step_scores in enumerate(out["scores"], start=1):
        want = core.apply_processors(p.processors, seqs[:, :t], logits(seqs[:, :t]))
        tol.assert_close(np.asarray(step_scores), want, tol.SCORES, f"scores step {t}")
        running = ~np.isin(seqs[:, 1:t], p.eos_token_ids).any(1)
        assert np.isfinite(want[np.arange(len(seqs)), seqs[:, t]][running]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_1_sampling_is_greedy(ours, backend):
    ids, mask = oracle.batch(1)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos_ids("bert2bert"))
    got = generation(backend).generate(ours(backend, "bert2bert", 1), ids, mask, do_sample=True,
                                       top_k=1, seed=3, **kw)
    np.testing.assert_array_equal(sequences(got),
                                  oracle.hf_generate(reference("bert2bert", 1), ids, mask, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_sampling_reproducible(ours, backend):
    generate, model = generation(backend).generate, ours(backend, "bert2gpt2", 0)
    ids, mask = oracle.batch(0)
    kw = dict(do_sample=True, num_beams=2, max_new_tokens=NEW, eos_token_id=eos_ids("bert2gpt2"))
    out = sequences(generate(model, ids, mask, seed=5, **kw))
    np.testing.assert_array_equal(sequences(generate(model, ids, mask, seed=5, **kw)),
                                  out)
    assert out.shape[0] == 3 and out.shape[1] <= NEW + 1 and (out[:, 0] == 2).all()


# --- no mask ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_mask(ours, backend):
    """Without attention_mask every source position is attended, as in the reference (which
    infers no mask for encoder-decoders), a compiled loop's bucket padding excepted. (A
    max_length beyond the decoder's positions, refused before XLA would clamp it:
    tests/harness/test_registry.py.)"""
    generate, model = generation(backend).generate, ours(backend, "bert2bert", 0)
    ids, _ = oracle.batch(0)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos_ids("bert2bert"))
    want = oracle.hf_generate(reference("bert2bert", 0), ids, None, **kw)
    np.testing.assert_array_equal(sequences(generate(model, ids, None, **kw)), want)


# --- the compiled backends ----------------------------------------------------------------------


PROCESSORS = {
    "logits": (core.RepetitionPenalty(1.3), core.NoRepeatNGram(2),
               core.BadWords(((4,), (1, 2), (3, 1, 2))), core.MinLength(6, (3, 5)),
               core.ForcedEOS(11, (3, 5))),
    "forced_bos": (core.ForcedBOS(7),),
    "warpers": (core.Temperature(0.7), core.TopK(20), core.TopP(0.8, 2)),
}


def compiled(backend: str, fn):
    """`fn` compiled as the backend's generate loop compiles it (XLA)."""
    if backend == "tf":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import jax

    return jax.jit(fn)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("which", PROCESSORS)
def test_processors_match_core(backend, which):
    specs = PROCESSORS[which]
    rng_ = np.random.default_rng(0)
    ids = rng_.integers(0, 6, (5, 12)).astype(np.int32)  # few distinct ids: n-grams repeat
    x = (rng_.normal(size=(5, 99)) * 3).astype(np.float32)
    run = compiled(backend, functools.partial(generation(backend).apply_processors, specs))
    for cur_len in (1, 2, 5, 10, 12):
        want = core.apply_processors(specs, ids[:, :cur_len].astype(np.int64), x)
        got = np.asarray(run(ids, np.int32(cur_len), x))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@SLOW  # CI: two programs per backend (the tokens of each: the tests above)
@pytest.mark.parametrize("backend", COMPILED)
def test_one_trace_per_length_bucket(ours, backend):
    """Source lengths inside one bucket reuse the compiled program; the tokens stay right; a
    model of the same architecture with other weights reuses it too."""
    G = generation(backend)
    model, ref = ours(backend, "bert2bert", 0), reference("bert2bert", 0)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos_ids("bert2bert"))

    def run(src_len: int) -> None:
        ids, mask = oracle.batch(0, src_len=src_len)
        np.testing.assert_array_equal(sequences(G.generate(model, ids, mask, **kw)),
                                      oracle.hf_generate(ref, ids, mask, **kw))

    run(5)
    before = G.TRACES["greedy_search"]
    for src_len in (7, 12, 16):  # bucket 16
        run(src_len)
    assert G.TRACES["greedy_search"] == before
    run(17)  # bucket 32: one new program
    run(30)
    assert G.TRACES["greedy_search"] == before + 1
    ids, mask = oracle.batch(1, src_len=12)
    np.testing.assert_array_equal(
        sequences(G.generate(ours(backend, "bert2bert", 1), ids, mask, **kw)),
        oracle.hf_generate(reference("bert2bert", 1), ids, mask, **kw))
    assert G.TRACES["greedy_search"] == before + 1

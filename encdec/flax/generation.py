"""Compiled generation for the Flax NNX backend: greedy search, sampling, beam search and beam
sampling, each one `nnx.jit` program that runs the encoder once and then a `lax.while_loop` over
the model's fixed-size cache, with no host sync until it ends.

Semantics are those of `encdec.core.generation` (transformers' PyTorch `generate`, 5.x): `plan`
resolves the call, the processors below are the jnp versions of its numpy ones, and the beam
step is its `beam_step` written with jnp / lax ops. Token ids equal the reference's on the same
weights; beam search also works without an eos id (the reference's Flax one crashes there).

The program is a `jax.jit` function of the model's arrays: each call flattens the model as a
pytree (its current weights, so an optimizer step is seen by the next call) and the program
rebuilds it from the pytree structure, so one trace serves every model of the same
architecture and config. Static shapes: the source length is padded up to a bucket
(`bucket_length`, the padding masked out) and the decoder runs on buffers of `max_length`.
Programs are cached per (plan, batch, bucket, model structure).

On CPU the program is compiled with XLA's region-based copy insertion
(`COMPILER_OPTIONS`): the self-attention caches in the loop carry are then updated in place
instead of being copied every step (`attention.attend_cached` reads them before the write).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from encdec.core import generation as gen
from encdec.core.config import GenerationConfig
from encdec.core.registry import max_positions
from encdec.core.validation import check_generate

from .params import host_array

TRACES: collections.Counter[str] = collections.Counter()  # strategy name -> times traced
_PROGRAMS: dict[Any, Any] = {}  # (plan, shapes, model pytree structure) -> jax.jit function
# XLA options of the generation programs, per backend (the library's own programs only)
COMPILER_OPTIONS: dict[str, dict[str, Any]] = {
    "cpu": {"xla_cpu_copy_insertion_use_region_analysis": True}}


def generate(model: nnx.Module, input_ids: Any, attention_mask: Any = None, *,
             generation_config: GenerationConfig | None = None, seed: int | None = None,
             rngs: nnx.Rngs | None = None, **kwargs: Any) -> Any:
    """Generate decoder token ids (batch * num_return_sequences, length), starting with the
    decoder start token, as transformers' `generate`; a `GenerateOutput` when
    `return_dict_in_generate`. `seed` makes sampling reproducible (random when None);
    `rngs` gives the key from its `sample` stream instead."""
    p = gen.plan(model.config, generation_config or model.generation_config, **kwargs)
    check_generate(model.config, p, input_ids, attention_mask, host=host_array)  # before jit
    ids = np.asarray(input_ids)
    # no mask: every position is attended (the reference infers none for encoder-decoders)
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else \
        np.asarray(attention_mask).astype(np.int32)
    limit = max_positions(model.config.encoder)
    ids, mask = gen.pad_to_bucket(ids, mask, gen.bucket_length(ids.shape[1], limit),
                                  p.pad_token_id or 0)
    weights, structure = jax.tree.flatten(model)  # the current weights, read at every call
    key = (gen.static_key(p), ids.shape, structure)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = jax.jit(functools.partial(_pure, key[0], structure),
                                 compiler_options=COMPILER_OPTIONS.get(jax.default_backend()))
    if rngs is not None:
        rng = rngs.sample()
    else:
        if seed is None:
            seed = random.SystemRandom().randrange(2**31) if p.do_sample else 0
        rng = jax.random.key(seed)
    out = _PROGRAMS[key](weights, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), rng)
    return gen.finish(p, jax.device_get(out), jnp.asarray)


# --- host side: inputs, buckets, outputs -------------------------------------------------------

# --- logits processors (jnp versions of encdec.core.generation's numpy ones) -------------------
# ids (N, L) int32: the decoder buffer, valid before `cur_len`; x (N, V) float32.

NEG_INF = float("-inf")


def _seen(ids: jax.Array, valid: jax.Array, vocab: int) -> jax.Array:
    """(N, V) bool: which ids occur in each row where `valid` (N, W) (ids (N, W))."""
    ids = jnp.where(valid, ids, vocab)  # invalid entries land in an extra column
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.zeros((ids.shape[0], vocab + 1), bool).at[rows, ids].set(True)[:, :vocab]


def _repetition_penalty(s: gen.RepetitionPenalty, ids, cur_len, x):
    seen = _seen(ids, jnp.arange(ids.shape[1])[None, :] < cur_len, x.shape[-1])
    penalty = jnp.float32(s.penalty)
    return jnp.where(seen, jnp.where(x < 0, x * penalty, x / penalty), x)


def _no_repeat_ngram(s: gen.NoRepeatNGram, ids, cur_len, x):
    n, length = s.size, ids.shape[1]
    w = length - n + 1  # n-gram windows in the buffer
    if w <= 0:
        return x
    windows = ids[:, jnp.arange(w)[:, None] + jnp.arange(n)[None, :]]  # (N, W, n)
    prefix = ids[:, jnp.maximum(cur_len - n + 1 + jnp.arange(n - 1), 0)]  # (N, n-1)
    match = jnp.all(windows[..., :-1] == prefix[:, None, :], -1)  # (N, W)
    match &= (jnp.arange(w) <= cur_len - n)[None, :]  # the whole n-gram lies before cur_len
    return jnp.where(_seen(windows[..., -1], match, x.shape[-1]), NEG_INF, x)


def _bad_words(s: gen.BadWords, ids, cur_len, x):
    vocab = jnp.arange(x.shape[-1])
    banned = jnp.zeros(x.shape, bool)
    for word in s.ids:
        prefix = word[:-1]
        if len(prefix) >= ids.shape[1]:  # can never match inside the buffer
            continue
        hit = jnp.ones(ids.shape[0], bool)
        if prefix:
            at = jnp.maximum(cur_len - len(prefix) + jnp.arange(len(prefix)), 0)
            hit = jnp.all(ids[:, at] == jnp.asarray(prefix, jnp.int32), -1)
            hit &= len(prefix) <= cur_len
        banned |= hit[:, None] & (vocab == word[-1])[None, :]
    return jnp.where(banned, NEG_INF, x)


def _is_in(ids: tuple[int, ...], vocab: int) -> jax.Array:
    """(V,) bool: which vocabulary entries are among `ids`."""
    return jnp.isin(jnp.arange(vocab), jnp.asarray(ids, jnp.int32))


def _min_length(s: gen.MinLength, ids, cur_len, x):
    return jnp.where((cur_len < s.min_length) & _is_in(s.eos_token_ids, x.shape[-1])[None],
                     NEG_INF, x)


def _forced(token_ids: tuple[int, ...], x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.where(_is_in(token_ids, x.shape[-1]), 0.0, NEG_INF), x.shape)


def _forced_bos(s: gen.ForcedBOS, ids, cur_len, x):
    return jnp.where(cur_len == 1, _forced((s.token_id,), x), x)


def _forced_eos(s: gen.ForcedEOS, ids, cur_len, x):
    return jnp.where(cur_len == s.max_length - 1, _forced(s.token_ids, x), x)


def _temperature(s: gen.Temperature, ids, cur_len, x):
    return x / jnp.float32(s.temperature)


def _top_k(s: gen.TopK, ids, cur_len, x):
    kth = jax.lax.top_k(x, min(s.k, x.shape[-1]))[0][:, -1:]  # (N, 1)
    return jnp.where(x < kth, NEG_INF, x)


def _top_p(s: gen.TopP, ids, cur_len, x):
    order = jnp.argsort(x, -1, stable=True)  # ascending, (N, V)
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(x, order, -1)), -1)
    drop = cum <= jnp.float32(1 - s.p)
    drop &= (jnp.arange(x.shape[-1]) < x.shape[-1] - s.min_tokens_to_keep)[None, :]
    drop = jnp.take_along_axis(drop, jnp.argsort(order, -1), -1)  # back to vocabulary order
    return jnp.where(drop, NEG_INF, x)


PROCESSORS = {
    gen.RepetitionPenalty: _repetition_penalty, gen.NoRepeatNGram: _no_repeat_ngram,
    gen.BadWords: _bad_words, gen.MinLength: _min_length, gen.ForcedBOS: _forced_bos,
    gen.ForcedEOS: _forced_eos, gen.Temperature: _temperature, gen.TopK: _top_k,
    gen.TopP: _top_p,
}


def apply_processors(processors: tuple[gen.Processor, ...], ids: jax.Array, cur_len: jax.Array,
                     x: jax.Array) -> jax.Array:
    """The plan's processors in order on x (N, V) float32; ids (N, L) valid before cur_len."""
    for spec in processors:
        x = PROCESSORS[type(spec)](spec, ids, cur_len, x)
    return x


def _gumbel(rng: jax.Array, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Gumbel(0, 1) noise from the call's key and the step: argmax(x + g) samples softmax(x),
    top_k(x + g) samples without replacement."""
    return jax.random.gumbel(jax.random.fold_in(rng, step), shape, jnp.float32)


# --- the compiled program ----------------------------------------------------------------------

def _pure(p: gen.GenerationPlan, structure: Any, weights: list[jax.Array], ids: jax.Array,
          mask: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    """`_run` on the model rebuilt from its flattened weights."""
    return _run(p, jax.tree.unflatten(structure, weights), ids, mask, rng)


def _run(p: gen.GenerationPlan, model: nnx.Module, ids: jax.Array, mask: jax.Array,
         rng: jax.Array) -> dict[str, jax.Array]:
    """Encoder once, cache, decoding loop. Runs at trace time only (counted in TRACES)."""
    TRACES[p.strategy.value] += 1
    enc = model.encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"]  # (B, S, H)
    cache = model.init_cache(enc, mask, ids.shape[0] * p.expand_size, p.max_length)
    cache = tuple(tuple(layer) for layer in cache)
    loop = _beam_loop if p.is_beam else _greedy_loop
    return loop(model, p, ids.shape[0], cache, mask, rng)


def _put(buf: jax.Array, at: jax.Array, value: jax.Array) -> jax.Array:
    """buf[..., at] = value: write one column of the last axis (value has buf's shape[:-1])."""
    return jnp.where(jnp.arange(buf.shape[-1]) == at, value[..., None], buf)


def _scores_buffer(p: gen.GenerationPlan, rows: int, vocab: int) -> jax.Array:
    """(steps, N, V) processed scores per step when returned, else an empty placeholder."""
    steps = p.max_length - gen.PROMPT_LENGTH if p.output_scores else 0
    return jnp.zeros((steps, rows, vocab if p.output_scores else 0), jnp.float32)


def _next_logits(model, ids, cache, cur_len, mask):
    """Logits (N, V) float32 of the token at cur_len - 1 and the updated cache."""
    token = jax.lax.dynamic_slice_in_dim(ids, cur_len - 1, 1, axis=1)  # (N, 1)
    logits, cache = model.decode_step(token, cache, cur_len - 1, mask)  # (N, 1, V)
    return logits[:, -1].astype(jnp.float32), tuple(tuple(layer) for layer in cache)


def _greedy_loop(model, p: gen.GenerationPlan, batch: int, cache, mask, rng):
    """Greedy search and sampling; N = batch * expand_size rows, example-major."""
    rows, length = batch * p.expand_size, p.max_length
    ids = jnp.full((rows, length), p.pad_token_id or 0, jnp.int32).at[:, 0].set(
        p.decoder_start_token_id)  # (N, L)
    vocab = model.config.decoder.lm_vocab_size
    eos = _is_in(p.eos_token_ids, vocab) if p.eos_token_ids else None

    def body(state):
        cur_len, ids, unfinished, cache, scores = state
        x, cache = _next_logits(model, ids, cache, cur_len, mask)
        x = apply_processors(p.processors, ids, cur_len, x)  # (N, V)
        if p.output_scores:
            scores = scores.at[cur_len - 1].set(x)
        if p.do_sample:
            x = x + _gumbel(rng, cur_len, x.shape)
        nxt = jnp.argmax(x, -1).astype(jnp.int32)  # (N,)
        if eos is not None:
            nxt = jnp.where(unfinished, nxt, p.pad_token_id)
            unfinished &= ~eos[nxt]
        unfinished &= cur_len + 1 < length
        return cur_len + 1, _put(ids, cur_len, nxt), unfinished, cache, scores

    def cond(state):
        cur_len, _, unfinished, _, _ = state
        return (cur_len < length) & jnp.any(unfinished)

    state = (jnp.int32(gen.PROMPT_LENGTH), ids, jnp.ones(rows, bool), cache,
             _scores_buffer(p, rows, vocab))
    cur_len, ids, _, _, scores = jax.lax.while_loop(cond, body, state)
    return dict(sequences=ids, cur_len=cur_len, step_scores=scores)


def _beam_loop(model, p: gen.GenerationPlan, batch: int, cache, mask, rng):
    """Beam search and beam sampling: `encdec.core.generation.beam_step` in jnp / lax ops."""
    k, keep, length = p.num_beams, p.beams_to_keep, p.max_length
    vocab = model.config.decoder.lm_vocab_size
    state = {name: jnp.asarray(v, jnp.int32 if v.dtype == np.int64 else v.dtype)
             for name, v in dataclasses.asdict(gen.beam_init(p, batch)).items()}
    penalty = jnp.asarray(gen.length_penalties(p))  # n ** length_penalty, per length n
    eos = _is_in(p.eos_token_ids, vocab) if p.eos_token_ids else jnp.zeros(vocab, bool)
    neg = jnp.float32(gen.BEAM_NEG)
    top_k_mask = jnp.arange(keep) < k  # (2K,) only the top K candidates may finish

    def gather(x, idx):  # x (B, M, ...), idx (B, K') -> (B, K', ...)
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)

    def body(loop):
        cur_len, s, done, cache, scores = loop
        flat = s["running_sequences"].reshape(batch * k, length)  # (N, L)
        x, cache = _next_logits(model, flat, cache, cur_len, mask)
        x = apply_processors(p.processors, flat, cur_len, jax.nn.log_softmax(x))  # (N, V)
        if p.output_scores:
            scores = scores.at[cur_len - 1].set(x)
        acc = (x.reshape(batch, k, vocab) + s["running_scores"][:, :, None]).reshape(
            batch, k * vocab)  # (B, K*V)

        # c. the top 2K continuations (sampled without replacement for beam sampling)
        if p.do_sample:
            top = jax.lax.top_k(acc + _gumbel(rng, cur_len, acc.shape), keep)[1]
            top_scores, order = jax.lax.top_k(gather(acc, top), keep)
            top = gather(top, order)
        else:
            top_scores, top = jax.lax.top_k(acc, keep)  # (B, 2K)
        src, token = top // vocab, top % vocab
        cand_seqs = _put(gather(s["running_sequences"], src), cur_len, token)  # (B, 2K, L)
        flat_src = src + jnp.arange(batch)[:, None] * k
        cand_idx = _put(gather(s["running_beam_indices"], src), cur_len - gen.PROMPT_LENGTH,
                        flat_src)  # (B, 2K, L - 1)

        # d. which candidates hit a stopping criterion (eos, max length)
        hits = eos[token] | (cur_len + 1 >= length)  # (B, 2K)

        # e. the best K unfinished candidates keep running
        alive = top_scores + hits.astype(jnp.float32) * neg
        nxt = jax.lax.top_k(alive, k)[1]  # (B, K)
        running = dict(running_sequences=gather(cand_seqs, nxt), running_scores=gather(alive, nxt),
                       running_beam_indices=gather(cand_idx, nxt))

        # f. finished candidates among the top K enter the finished set if good enough
        just_finished = hits & top_k_mask[None, :]
        fin = top_scores / penalty[cur_len + 1 - gen.PROMPT_LENGTH]
        full = jnp.all(s["is_sent_finished"], -1, keepdims=True) & (p.early_stopping is True)
        fin += full.astype(jnp.float32) * neg
        fin += (~s["improvable"]).astype(jnp.float32) * neg
        fin += (~just_finished).astype(jnp.float32) * neg
        merged_scores = jnp.concatenate([s["scores"], fin], 1)  # (B, 3K)
        best = jax.lax.top_k(merged_scores, k)[1]
        finished = dict(
            sequences=gather(jnp.concatenate([s["sequences"], cand_seqs], 1), best),
            scores=gather(merged_scores, best),
            beam_indices=gather(jnp.concatenate([s["beam_indices"], cand_idx], 1), best),
            is_sent_finished=gather(jnp.concatenate([s["is_sent_finished"], just_finished], 1),
                                    best))

        # g. can a running beam still beat the worst finished one?
        if p.early_stopping == "never" and p.length_penalty > 0.0:
            best_len = length - gen.PROMPT_LENGTH
        else:
            best_len = cur_len + 1 - gen.PROMPT_LENGTH
        best_running = running["running_scores"][:, :1] / penalty[best_len]  # (B, 1)
        worst = jnp.where(finished["is_sent_finished"],
                          jnp.min(finished["scores"], 1, keepdims=True), neg)
        improvable = s["improvable"] & jnp.any(best_running > worst, -1, keepdims=True)
        all_full = jnp.all(finished["is_sent_finished"]) & (p.early_stopping is True)
        done = ~(jnp.any(improvable) & ~all_full & ~jnp.all(hits))

        # the self-attention cache follows its beams; cross K/V are per example and stay
        reorder = running["running_beam_indices"][:, :, cur_len - gen.PROMPT_LENGTH].reshape(-1)
        cache = tuple((kb[reorder], vb[reorder], ck, cv) for kb, vb, ck, cv in cache)
        s = dict(**running, **finished, improvable=improvable)
        return cur_len + 1, s, done, cache, scores

    def cond(loop):
        cur_len, _, done, _, _ = loop
        return ~done & (cur_len < length)

    loop = (jnp.int32(gen.PROMPT_LENGTH), state, jnp.bool_(False), cache,
            _scores_buffer(p, batch * k, vocab))
    cur_len, state, _, _, scores = jax.lax.while_loop(cond, body, loop)
    return dict(state, cur_len=cur_len, step_scores=scores)

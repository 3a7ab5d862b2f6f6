"""Compiled generation for the TensorFlow backend: greedy search, sampling, beam search and beam
sampling, each one XLA program (`tf.function(jit_compile=True)`) that runs the encoder once and
then a `tf.while_loop` over the model's fixed-size cache, with no host sync until it ends.

Semantics are those of `encdec.core.generation` (transformers' PyTorch `generate`, 5.x): `plan`
resolves the call, the processors below are the tensor versions of its numpy ones, and the beam
step is its `beam_step` written with TF ops. Token ids equal the reference's on the same weights.

Static shapes: the source length is padded up to a bucket (`bucket_length`, the padding masked
out) and the decoder runs on buffers of `max_length`, so one compiled program serves every
input length inside a bucket. Programs are cached per model and (plan, batch, bucket).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from encdec.core import generation as gen
from encdec.core.config import GenerationConfig
from encdec.core.registry import max_positions
from encdec.core.validation import check_generate

from .params import host_array

TRACES: collections.Counter[str] = collections.Counter()  # strategy name -> times traced
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: tf.function}


def generate(model: Any, input_ids: Any, attention_mask: Any = None, *,
             generation_config: GenerationConfig | None = None, seed: int | None = None,
             **kwargs: Any) -> Any:
    """Generate decoder token ids (batch * num_return_sequences, length), starting with the
    decoder start token, as transformers' `generate`; a `GenerateOutput` when
    `return_dict_in_generate`. `seed` makes sampling reproducible (random when None)."""
    p = gen.plan(model.config, generation_config or getattr(model, "generation_config", None),
                 **kwargs)
    check_generate(model.config, p, input_ids, attention_mask, host=host_array)  # before XLA
    ids = np.asarray(input_ids)
    # no mask: every position is attended (the reference infers none for encoder-decoders)
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else \
        np.asarray(attention_mask).astype(np.int32)
    limit = max_positions(model.config.encoder)
    ids, mask = gen.pad_to_bucket(ids, mask, gen.bucket_length(ids.shape[1], limit),
                                  p.pad_token_id or 0)
    key = gen.static_key(p)
    programs = _PROGRAMS.setdefault(model, {})
    if (key, ids.shape) not in programs:
        run = functools.partial(_run, weakref.ref(model), key)
        programs[key, ids.shape] = tf.function(run, jit_compile=True, autograph=False)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31) if p.do_sample else 0
    out = programs[key, ids.shape](tf.constant(ids, tf.int32), tf.constant(mask, tf.int32),
                                   tf.constant([seed, 0], tf.int64))
    return gen.finish(p, {k: v.numpy() for k, v in out.items()}, tf.constant)


# --- host side: inputs, buckets, outputs -------------------------------------------------------

# --- logits processors (tensor versions of encdec.core.generation's numpy ones) ----------------
# ids (N, L) int32: the decoder buffer, valid before `cur_len`; x (N, V) float32.

NEG_INF = float("-inf")


def _seen(ids: tf.Tensor, valid: tf.Tensor, vocab: int) -> tf.Tensor:
    """(N, V) bool: which ids occur in each row where `valid` (N, W) (ids (N, W))."""
    n, w = ids.shape
    ids = tf.where(valid, ids, vocab)  # invalid entries land in an extra column
    rows = tf.broadcast_to(tf.range(n)[:, None], [n, w])
    counts = tf.scatter_nd(tf.stack([rows, ids], -1), tf.ones([n, w], tf.int32), [n, vocab + 1])
    return counts[:, :vocab] > 0


def _repetition_penalty(s: gen.RepetitionPenalty, ids, cur_len, x):
    seen = _seen(ids, tf.range(ids.shape[1])[None, :] < cur_len, x.shape[-1])
    penalty = tf.constant(s.penalty, tf.float32)
    return tf.where(seen, tf.where(x < 0, x * penalty, x / penalty), x)


def _no_repeat_ngram(s: gen.NoRepeatNGram, ids, cur_len, x):
    n, length = s.size, ids.shape[1]
    w = length - n + 1  # n-gram windows in the buffer
    if w <= 0:
        return x
    windows = tf.gather(ids, tf.range(w)[:, None] + tf.range(n)[None, :], axis=1)  # (N, W, n)
    prefix = tf.gather(ids, tf.maximum(cur_len - n + 1 + tf.range(n - 1), 0), axis=1)  # (N, n-1)
    match = tf.reduce_all(windows[..., :-1] == prefix[:, None, :], -1)  # (N, W)
    match &= (tf.range(w) <= cur_len - n)[None, :]  # the whole n-gram lies before cur_len
    return tf.where(_seen(windows[..., -1], match, x.shape[-1]), NEG_INF, x)


def _bad_words(s: gen.BadWords, ids, cur_len, x):
    vocab = tf.range(x.shape[-1])
    banned = tf.zeros_like(x, tf.bool)
    for word in s.ids:
        prefix = word[:-1]
        if len(prefix) >= ids.shape[1]:  # can never match inside the buffer
            continue
        hit = tf.ones([ids.shape[0]], tf.bool)
        if prefix:
            at = tf.maximum(cur_len - len(prefix) + tf.range(len(prefix)), 0)
            hit = tf.reduce_all(tf.gather(ids, at, axis=1) == tf.constant(prefix, tf.int32), -1)
            hit &= len(prefix) <= cur_len
        banned |= hit[:, None] & (vocab == word[-1])[None, :]
    return tf.where(banned, NEG_INF, x)


def _is_in(ids: tuple[int, ...], vocab: int) -> tf.Tensor:
    """(V,) bool: which vocabulary entries are among `ids`."""
    return tf.reduce_any(tf.range(vocab)[:, None] == tf.constant(ids, tf.int32)[None, :], -1)


def _min_length(s: gen.MinLength, ids, cur_len, x):
    return tf.where((cur_len < s.min_length) & _is_in(s.eos_token_ids, x.shape[-1])[None],
                    NEG_INF, x)


def _forced(token_ids: tuple[int, ...], x: tf.Tensor) -> tf.Tensor:
    return tf.broadcast_to(tf.where(_is_in(token_ids, x.shape[-1]), 0.0, NEG_INF)[None], x.shape)


def _forced_bos(s: gen.ForcedBOS, ids, cur_len, x):
    return tf.where(cur_len == 1, _forced((s.token_id,), x), x)


def _forced_eos(s: gen.ForcedEOS, ids, cur_len, x):
    return tf.where(cur_len == s.max_length - 1, _forced(s.token_ids, x), x)


def _temperature(s: gen.Temperature, ids, cur_len, x):
    return x / tf.constant(s.temperature, tf.float32)


def _top_k(s: gen.TopK, ids, cur_len, x):
    kth = tf.math.top_k(x, min(s.k, x.shape[-1])).values[:, -1:]  # (N, 1)
    return tf.where(x < kth, NEG_INF, x)


def _top_p(s: gen.TopP, ids, cur_len, x):
    order = tf.argsort(x, -1, stable=True)  # ascending, (N, V)
    cum = tf.cumsum(tf.nn.softmax(tf.gather(x, order, batch_dims=1)), -1)
    drop = cum <= tf.constant(1 - s.p, tf.float32)
    drop &= (tf.range(x.shape[-1]) < x.shape[-1] - s.min_tokens_to_keep)[None, :]
    drop = tf.gather(drop, tf.argsort(order, -1), batch_dims=1)  # back to vocabulary order
    return tf.where(drop, NEG_INF, x)


PROCESSORS = {
    gen.RepetitionPenalty: _repetition_penalty, gen.NoRepeatNGram: _no_repeat_ngram,
    gen.BadWords: _bad_words, gen.MinLength: _min_length, gen.ForcedBOS: _forced_bos,
    gen.ForcedEOS: _forced_eos, gen.Temperature: _temperature, gen.TopK: _top_k,
    gen.TopP: _top_p,
}


def apply_processors(processors: tuple[gen.Processor, ...], ids: tf.Tensor, cur_len: tf.Tensor,
                     x: tf.Tensor) -> tf.Tensor:
    """The plan's processors in order on x (N, V) float32; ids (N, L) valid before cur_len."""
    for spec in processors:
        x = PROCESSORS[type(spec)](spec, ids, cur_len, x)
    return x


def _gumbel(seed: tf.Tensor, step: tf.Tensor, shape: list[int]) -> tf.Tensor:
    """Gumbel(0, 1) noise from the call's seed and the step: argmax(x + g) samples softmax(x),
    top_k(x + g) samples without replacement."""
    u = tf.random.stateless_uniform(shape, tf.stack([seed[0], tf.cast(step, tf.int64)]),
                                    minval=np.finfo(np.float32).tiny, maxval=1.0)
    return -tf.math.log(-tf.math.log(u))


# --- the compiled program ----------------------------------------------------------------------

def _run(model_ref: weakref.ref, p: gen.GenerationPlan, ids: tf.Tensor, mask: tf.Tensor,
         seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Encoder once, cache, decoding loop. Runs at trace time only (counted in TRACES)."""
    TRACES[p.strategy.value] += 1
    model = model_ref()
    enc = model.encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"]  # (B, S, H)
    rows = ids.shape[0] * p.expand_size
    cache = tuple(tuple(layer) for layer in model.init_cache(enc, mask, rows, p.max_length))
    loop = _beam_loop if p.is_beam else _greedy_loop
    return loop(model, p, ids.shape[0], cache, mask, seed)


def _put(buf: tf.Tensor, at: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """buf[..., at] = value: write one column of the last axis (value has buf's shape[:-1])."""
    return tf.where(tf.range(buf.shape[-1]) == at, value[..., None], buf)


def _scores_buffer(p: gen.GenerationPlan, rows: int, vocab: int) -> tf.Tensor:
    """(steps, N, V) processed scores per step when returned, else an empty placeholder."""
    steps = p.max_length - gen.PROMPT_LENGTH if p.output_scores else 0
    return tf.zeros([steps, rows, vocab if p.output_scores else 0], tf.float32)


def _next_logits(model, ids, cache, cur_len, mask):
    """Logits (N, V) float32 of the token at cur_len - 1 and the updated cache."""
    token = tf.gather(ids, [cur_len - 1], axis=1)  # (N, 1)
    logits, cache = model.decode_step(token, cache, cur_len - 1, mask)  # (N, 1, V)
    return tf.cast(logits[:, -1], tf.float32), tuple(tuple(layer) for layer in cache)


def _greedy_loop(model, p: gen.GenerationPlan, batch: int, cache, mask, seed):
    """Greedy search and sampling; N = batch * expand_size rows, example-major."""
    rows, length = batch * p.expand_size, p.max_length
    ids = _put(tf.fill([rows, length], p.pad_token_id or 0), 0,
               tf.fill([rows], p.decoder_start_token_id))  # (N, L)
    vocab = model.config.decoder.lm_vocab_size
    eos = _is_in(p.eos_token_ids, vocab) if p.eos_token_ids else None

    def body(cur_len, ids, unfinished, cache, scores):
        x, cache = _next_logits(model, ids, cache, cur_len, mask)
        x = apply_processors(p.processors, ids, cur_len, x)  # (N, V)
        if p.output_scores:
            scores = tf.tensor_scatter_nd_update(scores, [[cur_len - 1]], x[None])
        if p.do_sample:
            x = x + _gumbel(seed, cur_len, x.shape)
        nxt = tf.argmax(x, -1, output_type=tf.int32)  # (N,)
        if eos is not None:
            nxt = tf.where(unfinished, nxt, p.pad_token_id)
            unfinished &= ~tf.gather(eos, nxt)
        unfinished &= cur_len + 1 < length
        return cur_len + 1, _put(ids, cur_len, nxt), unfinished, cache, scores

    def cond(cur_len, ids, unfinished, cache, scores):
        return (cur_len < length) & tf.reduce_any(unfinished)

    state = (tf.constant(gen.PROMPT_LENGTH), ids, tf.ones([rows], tf.bool), cache,
             _scores_buffer(p, rows, vocab))
    cur_len, ids, _, _, scores = tf.while_loop(cond, body, state)
    return dict(sequences=ids, cur_len=cur_len, step_scores=scores)


def _beam_loop(model, p: gen.GenerationPlan, batch: int, cache, mask, seed):
    """Beam search and beam sampling: `encdec.core.generation.beam_step` in TF ops."""
    k, keep, length = p.num_beams, p.beams_to_keep, p.max_length
    vocab = model.config.decoder.lm_vocab_size
    state = {name: tf.constant(value) for name, value in
             dataclasses.asdict(gen.beam_init(p, batch)).items()}
    state = {name: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for name, v in state.items()}
    # length ** length_penalty as the reference computes it (float64, then float32), per length
    penalty = tf.constant(gen.length_penalties(p))
    eos = _is_in(p.eos_token_ids, vocab) if p.eos_token_ids else tf.zeros([vocab], tf.bool)
    neg = tf.constant(gen.BEAM_NEG, tf.float32)
    top_k_mask = tf.range(keep) < k  # (2K,) only the top K candidates may finish

    def gather(x, idx):  # x (B, M, ...), idx (B, K') -> (B, K', ...)
        return tf.gather(x, idx, batch_dims=1)

    def body(cur_len, s, done, cache, scores):
        flat = tf.reshape(s["running_sequences"], [batch * k, length])  # (N, L)
        x, cache = _next_logits(model, flat, cache, cur_len, mask)
        x = apply_processors(p.processors, flat, cur_len, tf.nn.log_softmax(x))  # (N, V)
        if p.output_scores:
            scores = tf.tensor_scatter_nd_update(scores, [[cur_len - 1]], x[None])
        acc = tf.reshape(tf.reshape(x, [batch, k, vocab]) + s["running_scores"][:, :, None],
                         [batch, k * vocab])  # (B, K*V)

        # c. the top 2K continuations (sampled without replacement for beam sampling)
        if p.do_sample:
            top = tf.math.top_k(acc + _gumbel(seed, cur_len, acc.shape), keep).indices
            top_scores, order = tf.math.top_k(gather(acc, top), keep)
            top = gather(top, order)
        else:
            top_scores, top = tf.math.top_k(acc, keep)  # (B, 2K)
        src, token = top // vocab, top % vocab
        cand_seqs = _put(gather(s["running_sequences"], src), cur_len, token)  # (B, 2K, L)
        flat_src = src + tf.range(batch)[:, None] * k
        cand_idx = _put(gather(s["running_beam_indices"], src), cur_len - gen.PROMPT_LENGTH,
                        flat_src)  # (B, 2K, L - 1)

        # d. which candidates hit a stopping criterion (eos, max length)
        hits = tf.gather(eos, token) | (cur_len + 1 >= length)  # (B, 2K)

        # e. the best K unfinished candidates keep running
        alive = top_scores + tf.cast(hits, tf.float32) * neg
        nxt = tf.math.top_k(alive, k).indices  # (B, K)
        running = dict(running_sequences=gather(cand_seqs, nxt), running_scores=gather(alive, nxt),
                       running_beam_indices=gather(cand_idx, nxt))

        # f. finished candidates among the top K enter the finished set if good enough
        just_finished = hits & top_k_mask[None, :]
        fin = top_scores / penalty[cur_len + 1 - gen.PROMPT_LENGTH]
        full = tf.reduce_all(s["is_sent_finished"], -1, keepdims=True) & (p.early_stopping is True)
        fin += tf.cast(full, tf.float32) * neg
        fin += tf.cast(~s["improvable"], tf.float32) * neg
        fin += tf.cast(~just_finished, tf.float32) * neg
        merged_scores = tf.concat([s["scores"], fin], 1)  # (B, 3K)
        best = tf.math.top_k(merged_scores, k).indices
        finished = dict(
            sequences=gather(tf.concat([s["sequences"], cand_seqs], 1), best),
            scores=gather(merged_scores, best),
            beam_indices=gather(tf.concat([s["beam_indices"], cand_idx], 1), best),
            is_sent_finished=gather(tf.concat([s["is_sent_finished"], just_finished], 1), best))

        # g. can a running beam still beat the worst finished one?
        if p.early_stopping == "never" and p.length_penalty > 0.0:
            best_len = length - gen.PROMPT_LENGTH
        else:
            best_len = cur_len + 1 - gen.PROMPT_LENGTH
        best_running = running["running_scores"][:, :1] / penalty[best_len]  # (B, 1)
        worst = tf.where(finished["is_sent_finished"],
                         tf.reduce_min(finished["scores"], 1, keepdims=True), neg)
        improvable = s["improvable"] & tf.reduce_any(best_running > worst, -1, keepdims=True)
        all_full = tf.reduce_all(finished["is_sent_finished"]) & (p.early_stopping is True)
        done = ~(tf.reduce_any(improvable) & ~all_full & ~tf.reduce_all(hits))

        # the self-attention cache follows its beams; cross K/V are per example and stay
        reorder = tf.reshape(running["running_beam_indices"][:, :, cur_len - gen.PROMPT_LENGTH],
                             [-1])  # (N,)
        cache = tuple((tf.gather(kb, reorder), tf.gather(vb, reorder), ck, cv)
                      for kb, vb, ck, cv in cache)
        s = dict(**running, **finished, improvable=improvable)
        return cur_len + 1, s, done, cache, scores

    def cond(cur_len, s, done, cache, scores):
        return ~done & (cur_len < length)

    loop = (tf.constant(gen.PROMPT_LENGTH), state, tf.constant(False), cache,
            _scores_buffer(p, batch * k, vocab))
    cur_len, state, _, _, scores = tf.while_loop(cond, body, loop)
    return dict(state, cur_len=cur_len, step_scores=scores)

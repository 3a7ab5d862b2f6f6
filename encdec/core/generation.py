"""Generation rules shared by every backend, following transformers 5.x `GenerationMixin.generate`.

Three parts, all framework-free:

1. `plan(model_config, generation_config, **overrides) -> GenerationPlan` resolves everything
   once per call: the special ids, the length limits, the strategy and the ordered logits
   processors (`RepetitionPenalty`, `NoRepeatNGram`, `BadWords`, `MinLength`, `ForcedBOS`,
   `ForcedEOS`, then for sampling `Temperature`, `TopK`, `TopP`) — the order, the conditions
   and (through `encdec.core.validation`) the argument errors of the reference's
   `_get_logits_processor` / `_prepare_generated_length` / `_prepare_special_tokens`.
2. numpy implementations of every processor (`apply_processors`) and of the reference's
   vectorised beam search (`beam_init`, `beam_step`, `beam_finalize`): the executable spec each
   backend's tensor code must match.
3. `generate_reference(plan, logits_fn, batch_size)`: the whole decoding loop in numpy, driven
   by any next-token logits function (no cache). Tests run it on transformers' model to check
   this module against transformers' `generate`.

Conventions (as the reference for encoder-decoders): a decoder sequence starts with
`decoder_start_token_id`, so `cur_len` (the length before the next token) starts at 1 and
`max_length` counts the start token. Rows are example-major: row `b * n + j` is copy `j` of
example `b` (n = `plan.expand_size`). In beam search, greedy/sampling processors see
`log_softmax(logits)` (the reference applies them after `log_softmax`); in greedy and sampling
they see the raw fp32 logits.

A backend's `generate` does, with its own tensors:

    p = plan(model.config, model.generation_config, **kwargs)
    enc = model.encoder(input_ids=..., attention_mask=...).last_hidden_state   # once
    cache = model.init_cache(enc, mask, batch * p.expand_size, p.max_length)
    greedy/sample: per step, logits -> processors -> argmax / multinomial -> pad finished rows
                   (`pad_token_id`) -> stop when every row hit an eos id or max_length
    beam:          per step, log_softmax -> processors -> + running scores -> `beam_step`
                   -> gather the self-attention cache rows by the returned `reorder` index
    return make_output(p, sequences, scores=..., sequences_scores=..., beam_indices=...)
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import EncoderDecoderConfig, GenerationConfig
from .outputs import GenerateOutput
from .seq2seq import decoder_start_token_id as resolve_decoder_start
from .validation import check_generation_config

PROMPT_LENGTH = 1  # the decoder prompt is the start token alone
DEFAULT_MAX_NEW_TOKENS = 20  # the reference's model-agnostic default (`max_length=20` + prompt)
NEG_INF = float("-inf")
BEAM_NEG = -1.0e9  # the reference's "very large negative" for beam bookkeeping (not -inf)


class Strategy(enum.Enum):
    """The reference's `GenerationMode`s that encdec implements."""

    GREEDY = "greedy_search"
    SAMPLE = "sample"
    BEAM = "beam_search"
    BEAM_SAMPLE = "beam_sample"


# ---------------------------------------------------------------------------------------------
# Processor specs: small frozen dataclasses, in the order `plan` emits them.
# `input_ids` below is the decoder sequence so far, (N, cur_len), start token included.


@dataclass(frozen=True)
class RepetitionPenalty:
    """Every id in input_ids: score < 0 -> score * penalty, else score / penalty."""

    penalty: float


@dataclass(frozen=True)
class NoRepeatNGram:
    """Ban each token that would complete an n-gram already in input_ids (per row)."""

    size: int


@dataclass(frozen=True)
class BadWords:
    """Ban single-token entries always; a longer entry's last token when input_ids ends with
    its prefix. Entries equal to `[eos]` are dropped, as the reference does."""

    ids: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class MinLength:
    """While cur_len < min_length, eos ids get -inf. (The reference's `MinLengthLogitsProcessor`
    and `MinNewTokensLengthLogitsProcessor`: with a prompt of 1 they are the same rule.)"""

    min_length: int
    eos_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class ForcedBOS:
    """At cur_len == 1 every score is -inf except `token_id`, which is 0."""

    token_id: int


@dataclass(frozen=True)
class ForcedEOS:
    """At cur_len == max_length - 1 every score is -inf except the ids, which are 0."""

    max_length: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Temperature:
    """scores / temperature."""

    temperature: float


@dataclass(frozen=True)
class TopK:
    """Scores below the k-th largest get -inf (ties with it are kept). k >= min_tokens_to_keep."""

    k: int


@dataclass(frozen=True)
class TopP:
    """Sort ascending, softmax, cumsum: drop the tokens with cumulative prob <= 1 - p, keeping
    the `min_tokens_to_keep` most probable."""

    p: float
    min_tokens_to_keep: int


Processor = RepetitionPenalty | NoRepeatNGram | BadWords | MinLength | ForcedBOS | ForcedEOS \
    | Temperature | TopK | TopP


@dataclass(frozen=True)
class GenerationPlan:
    """Everything one `generate` call needs, resolved once (see `plan`)."""

    strategy: Strategy
    decoder_start_token_id: int
    pad_token_id: int | None  # fills finished rows in greedy / sampling (eos[0] if unset)
    eos_token_ids: tuple[int, ...]  # () = no eos: every row runs to max_length
    max_length: int  # total decoder length, start token included
    min_length: int  # eos is banned while cur_len < min_length
    num_beams: int
    num_return_sequences: int
    length_penalty: float
    early_stopping: bool | str  # True, False or "never"
    processors: tuple[Processor, ...]
    output_scores: bool
    return_dict_in_generate: bool

    @property
    def do_sample(self) -> bool:
        return self.strategy in (Strategy.SAMPLE, Strategy.BEAM_SAMPLE)

    @property
    def is_beam(self) -> bool:
        return self.strategy in (Strategy.BEAM, Strategy.BEAM_SAMPLE)

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - PROMPT_LENGTH

    @property
    def expand_size(self) -> int:
        """Decoder rows per example: beams, or sampled sequences per example."""
        return max(self.num_beams, self.num_return_sequences)

    @property
    def beams_to_keep(self) -> int:
        """Candidates kept per example and step in beam search: max(2, 1 + n_eos) * beams."""
        return max(2, 1 + len(self.eos_token_ids)) * self.num_beams

    @property
    def beam_fill_token_id(self) -> int:
        """What pads finished beams. The reference writes `pad or eos[0] if eos else -1`, so a
        pad id of 0 (falsy) gives eos[0]; we keep that."""
        if not self.eos_token_ids:
            return -1
        return self.pad_token_id if self.pad_token_id else self.eos_token_ids[0]


def plan(model_config: EncoderDecoderConfig, generation_config: GenerationConfig | None = None,
         **overrides: Any) -> GenerationPlan:
    """Resolve a `generate` call: `generation_config` (default: from the model config) updated
    with the per-call `overrides` (generation-config field names; unknown names raise TypeError).
    """
    base = generation_config or GenerationConfig.from_model_config(model_config)
    gc = base.merged(**overrides)
    check_generation_config(model_config, gc)  # every argument check, in one place

    start = resolve_decoder_start(model_config, gc)
    eos = _ids(gc.eos_token_id, "eos_token_id")
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)

    # lengths (`_prepare_generated_length`, `_validate_generated_length`)
    if gc.max_new_tokens is not None:
        max_length = gc.max_new_tokens + PROMPT_LENGTH
    elif gc.max_length is None:  # as the reference: unset until generate
        max_length = DEFAULT_MAX_NEW_TOKENS + PROMPT_LENGTH
        warnings.warn(f"Using the model-agnostic default `max_length` (={max_length}) to control "
                      "the generation length. We recommend setting `max_new_tokens` to control "
                      "the maximum length of the generation.", UserWarning, stacklevel=3)
    else:
        max_length = gc.max_length
    if PROMPT_LENGTH >= max_length:
        raise ValueError(f"Input length of decoder_input_ids is {PROMPT_LENGTH}, but "
                         f"`max_length` is set to {max_length}. This can lead to unexpected "
                         "behavior. You should consider increasing `max_length` or, better yet, "
                         "setting `max_new_tokens`.")
    min_length = (gc.min_new_tokens + PROMPT_LENGTH if gc.min_new_tokens is not None
                  else gc.min_length)
    if min_length > max_length:
        warnings.warn(f"Unfeasible length constraints: the minimum length ({min_length}) is larger "
                      f"than the maximum possible length ({max_length}). Generation will stop at "
                      "the defined maximum length.", UserWarning, stacklevel=3)

    # strategy (`get_generation_mode`, `validate`)
    if gc.num_beams == 1:
        strategy = Strategy.SAMPLE if gc.do_sample else Strategy.GREEDY
    else:
        strategy = Strategy.BEAM_SAMPLE if gc.do_sample else Strategy.BEAM

    processors = _processors(gc, strategy, eos, min_length, max_length)
    return GenerationPlan(
        strategy=strategy, decoder_start_token_id=start, pad_token_id=pad, eos_token_ids=eos,
        max_length=max_length, min_length=min_length, num_beams=gc.num_beams,
        num_return_sequences=gc.num_return_sequences, length_penalty=float(gc.length_penalty),
        early_stopping=gc.early_stopping, processors=processors, output_scores=gc.output_scores,
        return_dict_in_generate=gc.return_dict_in_generate)


def _ids(value: int | Sequence[int] | None, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if any(not isinstance(i, (int, np.integer)) or i < 0 for i in ids):
        raise ValueError(f"`{name}` has to be a list of positive integers, but is {value}")
    return tuple(int(i) for i in ids)


def _processors(gc: GenerationConfig, strategy: Strategy, eos: tuple[int, ...], min_length: int,
                max_length: int) -> tuple[Processor, ...]:
    """The reference's `_get_logits_processor`, restricted to the fields encdec implements."""
    out: list[Processor] = []
    if gc.repetition_penalty is not None and gc.repetition_penalty != 1.0:
        out.append(RepetitionPenalty(float(gc.repetition_penalty)))
    if gc.no_repeat_ngram_size is not None and gc.no_repeat_ngram_size > 0:
        out.append(NoRepeatNGram(int(gc.no_repeat_ngram_size)))
    if gc.bad_words_ids is not None:
        bad = gc.bad_words_ids
        kept = tuple(dict.fromkeys(tuple(int(i) for i in w) for w in bad
                                   if not (len(w) == 1 and w[0] in eos)))
        if kept:
            out.append(BadWords(kept))
    if eos and min_length > 0:
        out.append(MinLength(min_length, eos))
    if gc.forced_bos_token_id is not None:
        out.append(ForcedBOS(int(gc.forced_bos_token_id)))
    if gc.forced_eos_token_id is not None:
        out.append(ForcedEOS(max_length, _ids(gc.forced_eos_token_id, "eos_token_id")))
    if strategy in (Strategy.SAMPLE, Strategy.BEAM_SAMPLE):
        # beam sampling keeps at least one non-eos token per beam (`min_tokens_to_keep`)
        min_keep = max(2, len(eos) + 1) if strategy is Strategy.BEAM_SAMPLE else 1
        if gc.temperature is not None and gc.temperature != 1.0:
            out.append(Temperature(float(gc.temperature)))
        if gc.top_k is not None and gc.top_k != 0:
            out.append(TopK(max(int(gc.top_k), min_keep)))
        if gc.top_p is not None and gc.top_p < 1.0:
            out.append(TopP(float(gc.top_p), min_keep))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# numpy processors: the executable spec. scores (N, V) float32, input_ids (N, cur_len) int.


def _repetition_penalty(s: RepetitionPenalty, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    rows = np.arange(x.shape[0])[:, None]  # (N, 1)
    picked = x[rows, ids]  # (N, T)
    out = x.copy()
    out[rows, ids] = np.where(picked < 0, picked * np.float32(s.penalty),
                              picked / np.float32(s.penalty))
    return out


def _no_repeat_ngram(s: NoRepeatNGram, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    n, t = s.size, ids.shape[1]
    if t < n:
        return x
    windows = np.lib.stride_tricks.sliding_window_view(ids, n, axis=1)  # (N, T - n + 1, n)
    prefix = ids[:, t + 1 - n:]  # (N, n - 1)
    matches = (windows[..., :-1] == prefix[:, None, :]).all(-1)  # (N, T - n + 1)
    out = x.copy()
    for row, w in zip(*np.nonzero(matches), strict=True):
        out[row, windows[row, w, -1]] = NEG_INF
    return out


def _bad_words(s: BadWords, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = x.copy()
    for word in s.ids:
        prefix, last = word[:-1], word[-1]
        if len(prefix) > ids.shape[1]:
            continue
        hit = (ids[:, ids.shape[1] - len(prefix):] == np.asarray(prefix, ids.dtype)).all(-1)  # (N,)
        out[hit, last] = NEG_INF
    return out


def _min_length(s: MinLength, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    if ids.shape[1] >= s.min_length:
        return x
    out = x.copy()
    out[:, list(s.eos_token_ids)] = NEG_INF
    return out


def _forced(token_ids: Sequence[int], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, NEG_INF)
    out[:, list(token_ids)] = 0
    return out


def _forced_bos(s: ForcedBOS, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _forced([s.token_id], x) if ids.shape[1] == 1 else x


def _forced_eos(s: ForcedEOS, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _forced(s.token_ids, x) if ids.shape[1] == s.max_length - 1 else x


def _temperature(s: Temperature, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x / np.float32(s.temperature)


def _top_k(s: TopK, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    k = min(s.k, x.shape[-1])
    kth = np.sort(x, axis=-1)[:, -k][:, None]  # (N, 1)
    return np.where(x < kth, np.float32(NEG_INF), x)


def _top_p(s: TopP, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, axis=-1, kind="stable")  # ascending, (N, V)
    sorted_x = np.take_along_axis(x, order, -1)
    cum = np.cumsum(softmax(sorted_x), -1, dtype=np.float32)
    drop_sorted = cum <= np.float32(1 - s.p)
    drop_sorted[:, -s.min_tokens_to_keep:] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, -1)
    return np.where(drop, np.float32(NEG_INF), x)


NUMPY_PROCESSORS: dict[type, Callable[[Any, np.ndarray, np.ndarray], np.ndarray]] = {
    RepetitionPenalty: _repetition_penalty, NoRepeatNGram: _no_repeat_ngram,
    BadWords: _bad_words, MinLength: _min_length, ForcedBOS: _forced_bos,
    ForcedEOS: _forced_eos, Temperature: _temperature, TopK: _top_k, TopP: _top_p,
}


def apply_processors(processors: Sequence[Processor], input_ids: np.ndarray,
                     scores: np.ndarray) -> np.ndarray:
    """Apply the processors in order: input_ids (N, cur_len), scores (N, V) float32."""
    scores = np.asarray(scores, np.float32)
    for spec in processors:
        scores = NUMPY_PROCESSORS[type(spec)](spec, input_ids, scores)
    return scores


def softmax(x: np.ndarray) -> np.ndarray:
    """fp32 softmax over the last axis (-inf entries get probability 0)."""
    z = np.exp(x - x.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """fp32 log-softmax over the last axis."""
    z = x - x.max(-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Beam search: the reference's vectorised `_beam_search` (transformers 5.x), one step at a time.


@dataclass(frozen=True)
class BeamState:
    """Running (alive) and finished hypotheses per example. B examples, K = num_beams,
    L = max_length; `*_beam_indices` hold, per generated position, the flat row (b * K + k)
    the token was appended to (-1 = not generated)."""

    running_sequences: np.ndarray  # (B, K, L) int64
    running_scores: np.ndarray  # (B, K) float32, summed log-probs; beams 1.. start at -1e9
    running_beam_indices: np.ndarray  # (B, K, L - 1) int64
    sequences: np.ndarray  # (B, K, L) int64, finished hypotheses (best first)
    scores: np.ndarray  # (B, K) float32, length-penalised; -1e9 = empty slot
    beam_indices: np.ndarray  # (B, K, L - 1) int64
    is_sent_finished: np.ndarray  # (B, K) bool, slot holds a finished hypothesis
    improvable: np.ndarray  # (B, 1) bool, the reference's is_early_stop_heuristic_unsatisfied


def beam_init(p: GenerationPlan, batch_size: int) -> BeamState:
    """Initial state: every beam holds the start token; only beam 0 is live (score 0)."""
    b, k, L = batch_size, p.num_beams, p.max_length
    seqs = np.full((b, k, L), p.beam_fill_token_id, np.int64)
    seqs[:, :, 0] = p.decoder_start_token_id
    running_scores = np.zeros((b, k), np.float32)
    running_scores[:, 1:] = BEAM_NEG
    idx = np.full((b, k, L - PROMPT_LENGTH), -1, np.int64)
    return BeamState(seqs, running_scores, idx, seqs.copy(), np.full((b, k), BEAM_NEG, np.float32),
                     idx.copy(), np.zeros((b, k), bool), np.ones((b, 1), bool))


def beam_step(p: GenerationPlan, state: BeamState, log_probs: np.ndarray, cur_len: int,
              rng: np.random.Generator | None = None) -> tuple[BeamState, np.ndarray, bool]:
    """One step. log_probs (B*K, V): processed log-softmax of the logits at position cur_len - 1
    (processors see `state.running_sequences[..., :cur_len]`). Returns the new state, `reorder`
    (B*K,) — the flat row each new running beam continues (gather the self-attention cache rows
    with it) — and `done`."""
    b, k = state.running_scores.shape
    v = log_probs.shape[-1]
    keep = p.beams_to_keep
    acc = (log_probs.reshape(b, k, v) + state.running_scores[:, :, None]).reshape(b, k * v)

    # c. top-2K continuations (sampled without replacement for beam sampling)
    if p.do_sample:
        rng = rng if rng is not None else np.random.default_rng()
        probs = softmax(acc).astype(np.float64)
        top = np.stack([rng.choice(k * v, keep, replace=False, p=row / row.sum())
                        for row in probs])  # (B, 2K)
        top_scores = np.take_along_axis(acc, top, -1)
        order = np.argsort(-top_scores, axis=-1, kind="stable")
        top = np.take_along_axis(top, order, -1)
        top_scores = np.take_along_axis(top_scores, order, -1)
    else:
        top = np.argsort(-acc, axis=-1, kind="stable")[:, :keep]  # (B, 2K)
        top_scores = np.take_along_axis(acc, top, -1)
    src_beam, token = top // v, top % v  # (B, 2K)
    cand_seqs = np.take_along_axis(state.running_sequences, src_beam[:, :, None], 1)  # (B, 2K, L)
    cand_seqs[:, :, cur_len] = token
    cand_idx = np.take_along_axis(state.running_beam_indices, src_beam[:, :, None], 1)
    cand_idx[:, :, cur_len - PROMPT_LENGTH] = src_beam + np.arange(b)[:, None] * k

    # d. which candidates hit a stopping criterion (max length, eos)
    hits = np.isin(token, p.eos_token_ids) | (cur_len + 1 >= p.max_length)  # (B, 2K)

    # e. the best K unfinished candidates keep running
    alive_scores = top_scores + hits.astype(np.float32) * np.float32(BEAM_NEG)
    nxt = _topk_indices(alive_scores, k)  # (B, K)
    running_sequences = np.take_along_axis(cand_seqs, nxt[:, :, None], 1)
    running_scores = np.take_along_axis(alive_scores, nxt, 1)
    running_beam_indices = np.take_along_axis(cand_idx, nxt[:, :, None], 1)

    # f. finished candidates among the top K enter the finished set if good enough
    just_finished = hits & (np.arange(keep) < k)[None, :]
    fin_scores = top_scores / np.float32((cur_len + 1 - PROMPT_LENGTH) ** p.length_penalty)
    full = state.is_sent_finished.all(-1, keepdims=True) & (p.early_stopping is True)
    fin_scores = fin_scores + full.astype(np.float32) * np.float32(BEAM_NEG)
    fin_scores = fin_scores + (~state.improvable).astype(np.float32) * np.float32(BEAM_NEG)
    fin_scores = fin_scores + (~just_finished).astype(np.float32) * np.float32(BEAM_NEG)
    merged_scores = np.concatenate([state.scores, fin_scores], 1)  # (B, 3K)
    best = _topk_indices(merged_scores, k)
    sequences = np.take_along_axis(np.concatenate([state.sequences, cand_seqs], 1),
                                   best[:, :, None], 1)
    scores = np.take_along_axis(merged_scores, best, 1)
    beam_indices = np.take_along_axis(np.concatenate([state.beam_indices, cand_idx], 1),
                                      best[:, :, None], 1)
    is_sent_finished = np.take_along_axis(
        np.concatenate([state.is_sent_finished, just_finished], 1), best, 1)

    # g. can a running beam still beat the worst finished one?
    new_len = cur_len + 1
    if p.early_stopping == "never" and p.length_penalty > 0.0:
        best_len = p.max_length - PROMPT_LENGTH
    else:
        best_len = new_len - PROMPT_LENGTH
    best_running = running_scores[:, :1] / np.float32(best_len ** p.length_penalty)  # (B, 1)
    worst_finished = np.where(is_sent_finished, scores.min(1, keepdims=True), np.float32(BEAM_NEG))
    improvable = state.improvable & (best_running > worst_finished).any(-1, keepdims=True)
    done = not (improvable.any() and not (is_sent_finished.all() and p.early_stopping is True)
                and not hits.all())

    reorder = running_beam_indices[:, :, cur_len - PROMPT_LENGTH].reshape(-1)  # (B*K,)
    new = BeamState(running_sequences, running_scores.astype(np.float32), running_beam_indices,
                    sequences, scores.astype(np.float32), beam_indices, is_sent_finished,
                    improvable)
    return new, reorder, done


def _topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest along the last axis, best first; ties keep the lower index
    (as torch.topk on CPU for the sizes used here)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def beam_finalize(p: GenerationPlan, state: BeamState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequences (B*R, T), sequences_scores (B*R,), beam_indices (B*R, T - 1)): the best R =
    num_return_sequences finished hypotheses, cropped to the longest generated length."""
    r = p.num_return_sequences
    seqs = state.sequences[:, :r].reshape(-1, state.sequences.shape[-1])
    scores = state.scores[:, :r].reshape(-1)
    idx = state.beam_indices[:, :r].reshape(-1, state.beam_indices.shape[-1])
    generated = int((idx != -1).sum(1).max())
    return seqs[:, :PROMPT_LENGTH + generated], scores, idx[:, :generated]


# ---------------------------------------------------------------------------------------------
# Outputs and the numpy reference loop.


def make_output(p: GenerationPlan, sequences: Any, *, scores: Sequence[Any] | None = None,
                sequences_scores: Any = None, beam_indices: Any = None) -> Any:
    """`sequences` alone, or a GenerateOutput with the fields the reference returns."""
    if not p.return_dict_in_generate:
        return sequences
    return GenerateOutput(
        sequences=sequences,
        scores=tuple(scores) if p.output_scores and scores is not None else None,
        sequences_scores=sequences_scores if p.is_beam and p.output_scores else None,
        beam_indices=beam_indices if p.is_beam else None)


def generate_reference(p: GenerationPlan, logits_fn: Callable[[np.ndarray], np.ndarray],
                       batch_size: int, *, rng: np.random.Generator | None = None) -> Any:
    """The decoding loop in numpy. logits_fn(sequences (N, cur_len) int64) -> next-token logits
    (N, V); N = batch_size * p.expand_size. Returns what `make_output` returns (numpy)."""
    if p.is_beam:
        return _beam_reference(p, logits_fn, batch_size, rng)
    rng = rng if rng is not None else np.random.default_rng()
    n = batch_size * p.expand_size
    ids = np.full((n, 1), p.decoder_start_token_id, np.int64)
    unfinished = np.ones(n, bool)
    all_scores = []
    while True:
        scores = apply_processors(p.processors, ids, logits_fn(ids))  # (N, V)
        all_scores.append(scores)
        if p.do_sample:
            probs = softmax(scores).astype(np.float64)
            nxt = np.array([rng.choice(len(row), p=row / row.sum()) for row in probs])
        else:
            nxt = scores.argmax(-1)
        if p.eos_token_ids:
            assert p.pad_token_id is not None  # with eos ids, pad falls back to eos[0]
            nxt = np.where(unfinished, nxt, p.pad_token_id)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        unfinished &= ~(np.isin(nxt, p.eos_token_ids) | (ids.shape[1] >= p.max_length))
        if not unfinished.any():
            return make_output(p, ids, scores=all_scores)


def _beam_reference(p: GenerationPlan, logits_fn: Callable[[np.ndarray], np.ndarray],
                    batch_size: int, rng: np.random.Generator | None) -> Any:
    state, all_scores = beam_init(p, batch_size), []
    k, cur_len = p.num_beams, PROMPT_LENGTH
    while True:
        ids = state.running_sequences[:, :, :cur_len].reshape(batch_size * k, cur_len)
        log_probs = apply_processors(p.processors, ids, log_softmax(logits_fn(ids)))
        all_scores.append(log_probs)
        state, _, done = beam_step(p, state, log_probs, cur_len, rng)
        cur_len += 1
        if done:
            break
    seqs, seq_scores, idx = beam_finalize(p, state)
    return make_output(p, seqs, scores=all_scores, sequences_scores=seq_scores, beam_indices=idx)


__all__ = ["BadWords", "BeamState", "ForcedBOS", "ForcedEOS", "GenerationPlan", "MinLength",
           "NoRepeatNGram", "RepetitionPenalty", "Strategy", "Temperature", "TopK", "TopP",
           "apply_processors", "beam_finalize", "beam_init", "beam_step", "generate_reference",
           "log_softmax", "make_output", "plan", "softmax"]


# --- host-side helpers of the compiled loops (TF's XLA program, Flax's jitted while_loop) ------

BUCKET = 16  # compiled backends pad source lengths up to a multiple of this


def bucket_length(n: int, limit: int | None = None) -> int:
    """The padded source length for n tokens: n rounded up to a multiple of BUCKET, capped at
    the encoder's position limit (never below n)."""
    padded = -(-n // BUCKET) * BUCKET
    return max(n, min(padded, limit)) if limit else padded


def pad_to_bucket(ids: np.ndarray, mask: np.ndarray, length: int,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (B, S) ids and mask to (B, length); the new positions are masked out."""
    extra = ((0, 0), (0, length - ids.shape[1]))
    return np.pad(ids, extra, constant_values=pad_id), np.pad(mask, extra, constant_values=0)


def static_key(p: GenerationPlan) -> GenerationPlan:
    """What a compiled program depends on: the plan, with scores kept only when returned."""
    return dataclasses.replace(p, output_scores=p.output_scores and p.return_dict_in_generate,
                               return_dict_in_generate=False)


def length_penalties(p: GenerationPlan) -> np.ndarray:
    """(L + 1,) float32: entry n is n ** length_penalty as the reference computes it (a Python
    float, then float32), so compiled loops match `beam_step` bit for bit; entry 0 unused."""
    return np.array([1.0] + [float(n) ** p.length_penalty for n in range(1, p.max_length + 1)],
                    np.float32)


def finish(p: GenerationPlan, out: dict[str, np.ndarray], to_tensor: Callable[[Any], Any]) -> Any:
    """Crop a compiled loop's fixed-size buffers (numpy) to what was generated and build the
    reference's output, converting arrays with the backend's `to_tensor`."""
    cur_len = int(out["cur_len"])
    scores = None
    if p.output_scores and p.return_dict_in_generate:
        scores = [to_tensor(s) for s in out["step_scores"][:cur_len - PROMPT_LENGTH]]
    if not p.is_beam:
        return make_output(p, to_tensor(out["sequences"][:, :cur_len].astype(np.int64)),
                           scores=scores)
    state = BeamState(**{f.name: out[f.name] for f in dataclasses.fields(BeamState)})
    seqs, seq_scores, idx = beam_finalize(p, state)
    return make_output(p, to_tensor(seqs.astype(np.int64)), scores=scores,
                       sequences_scores=to_tensor(seq_scores),
                       beam_indices=to_tensor(idx.astype(np.int64)))

"""`generate` for the PyTorch backend: the tensor side of `encdec.core.generation`.

Follows transformers' `GenerationMixin.generate` (greedy, multinomial sampling, beam search,
beam sampling) token for token; `encdec.core.generation` resolves the call (`plan`) and holds the
numpy spec of every processor and of the beam step, which the torch code here mirrors line by
line. The encoder runs once; the decoder runs one `model.decode_step` per token on the model's
static cache (self-attention buffers written in place, cross-attention K/V computed once by
`model.init_cache` at the encoder batch size and never repeated or reordered across beams). The
only host synchronisation per step is the stopping check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from encdec.core import generation as G
from encdec.core.config import GenerationConfig
from encdec.core.validation import check_generate

from .params import host_array

# --- logits processors (same rules as encdec.core.generation's numpy versions) ------------------


def _repetition_penalty(s: G.RepetitionPenalty, ids: Tensor, x: Tensor) -> Tensor:
    picked = x.gather(1, ids)  # (N, T)
    return x.scatter(1, ids, torch.where(picked < 0, picked * s.penalty, picked / s.penalty))


def _no_repeat_ngram(s: G.NoRepeatNGram, ids: Tensor, x: Tensor) -> Tensor:
    n, t = s.size, ids.shape[1]
    if t < n:
        return x
    windows = ids.unfold(1, n, 1)  # (N, T - n + 1, n)
    prefix = ids[:, t + 1 - n:]  # (N, n - 1)
    matches = (windows[..., :-1] == prefix[:, None, :]).all(-1)  # (N, T - n + 1)
    v = x.shape[-1]
    banned = torch.zeros(x.shape[0], v + 1, dtype=torch.bool, device=x.device)  # spare column v
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=v), v), True)
    return x.masked_fill(banned[:, :v], float("-inf"))


def _bad_words(s: G.BadWords, ids: Tensor, x: Tensor) -> Tensor:
    x = x.clone()
    for word in s.ids:
        prefix, last = word[:-1], word[-1]
        if len(prefix) > ids.shape[1]:
            continue
        if not prefix:
            x[:, last] = float("-inf")
            continue
        want = torch.tensor(prefix, dtype=ids.dtype, device=ids.device)
        hit = (ids[:, ids.shape[1] - len(prefix):] == want).all(-1)  # (N,)
        x[:, last] = x[:, last].masked_fill(hit, float("-inf"))
    return x


def _min_length(s: G.MinLength, ids: Tensor, x: Tensor) -> Tensor:
    if ids.shape[1] >= s.min_length:
        return x
    x = x.clone()
    x[:, list(s.eos_token_ids)] = float("-inf")
    return x


def _forced(token_ids: tuple[int, ...], x: Tensor) -> Tensor:
    out = torch.full_like(x, float("-inf"))
    out[:, list(token_ids)] = 0
    return out


def _forced_bos(s: G.ForcedBOS, ids: Tensor, x: Tensor) -> Tensor:
    return _forced((s.token_id,), x) if ids.shape[1] == 1 else x


def _forced_eos(s: G.ForcedEOS, ids: Tensor, x: Tensor) -> Tensor:
    return _forced(s.token_ids, x) if ids.shape[1] == s.max_length - 1 else x


def _temperature(s: G.Temperature, ids: Tensor, x: Tensor) -> Tensor:
    return x / s.temperature


def _top_k(s: G.TopK, ids: Tensor, x: Tensor) -> Tensor:
    kth = torch.topk(x, min(s.k, x.shape[-1]))[0][..., -1:]  # (N, 1)
    return x.masked_fill(x < kth, float("-inf"))


def _top_p(s: G.TopP, ids: Tensor, x: Tensor) -> Tensor:
    sorted_x, order = torch.sort(x, descending=False)  # (N, V) ascending
    cum = sorted_x.softmax(-1).cumsum(-1)
    drop_sorted = cum <= (1 - s.p)
    drop_sorted[..., -s.min_tokens_to_keep:] = False
    return x.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))


PROCESSORS: dict[type, Callable[[Any, Tensor, Tensor], Tensor]] = {
    G.RepetitionPenalty: _repetition_penalty, G.NoRepeatNGram: _no_repeat_ngram,
    G.BadWords: _bad_words, G.MinLength: _min_length, G.ForcedBOS: _forced_bos,
    G.ForcedEOS: _forced_eos, G.Temperature: _temperature, G.TopK: _top_k, G.TopP: _top_p,
}


def apply_processors(processors: tuple, input_ids: Tensor, scores: Tensor) -> Tensor:
    """The plan's processors in order: input_ids (N, cur_len), scores (N, V) fp32."""
    for spec in processors:
        scores = PROCESSORS[type(spec)](spec, input_ids, scores)
    return scores


# --- generate ------------------------------------------------------------------------------


def generate(model, input_ids: Tensor, attention_mask: Tensor | None = None, *,
             generation_config: GenerationConfig | None = None,
             generator: torch.Generator | None = None, seed: int | None = None,
             **kwargs: Any) -> Tensor | Any:
    """Token ids (batch * num_return_sequences, length) starting with the decoder start id, or
    a `GenerateOutput` with `return_dict_in_generate=True`.

    `generation_config` defaults to `model.generation_config`; `kwargs` override its fields for
    this call. Sampling draws from `generator` (or a fresh one seeded with `seed`; else torch's
    global generator, as the reference).
    """
    p = G.plan(model.config, generation_config or model.generation_config, **kwargs)
    check_generate(model.config, p, input_ids, attention_mask, host=host_array)  # once per call
    device = next(model.parameters()).device
    input_ids = torch.as_tensor(input_ids, device=device)
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask, device=device)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask)
        states = enc["last_hidden_state"]  # (Be, S, H), computed once
        rows = input_ids.shape[0] * p.expand_size
        cache = model.init_cache(states, attention_mask, rows, p.max_length)
        step = _Decoder(model, cache, attention_mask)
        if p.is_beam:
            return _beam_search(p, step, input_ids.shape[0], device, generator)
        return _greedy_or_sample(p, step, rows, device, generator)


class _Decoder:
    """One `decode_step` per token on the static cache; beams reorder the self-attention rows."""

    def __init__(self, model, cache: tuple, encoder_attention_mask: Tensor | None):
        self.model, self.cache, self.mask = model, cache, encoder_attention_mask

    def __call__(self, tokens: Tensor, cur_len: int) -> Tensor:
        """tokens (N,) at position cur_len - 1 -> fp32 next-token logits (N, V)."""
        logits, self.cache = self.model.decode_step(tokens[:, None], self.cache, cur_len - 1,
                                                    self.mask)
        return logits[:, -1].float()

    def reorder(self, rows: Tensor, filled: int) -> None:
        """Row i of the self-attention buffers takes row rows[i] (first `filled` positions)."""
        for k_buf, v_buf, _, _ in self.cache:  # (N, h, max_len, d); cross K/V untouched
            k_buf[:, :, :filled] = k_buf[:, :, :filled].index_select(0, rows)
            v_buf[:, :, :filled] = v_buf[:, :, :filled].index_select(0, rows)


def _greedy_or_sample(p: G.GenerationPlan, step: _Decoder, rows: int, device: torch.device,
                      generator: torch.Generator | None) -> Tensor | Any:
    seqs = torch.full((rows, p.max_length), p.decoder_start_token_id, dtype=torch.long,
                      device=device)
    eos = torch.tensor(p.eos_token_ids, dtype=torch.long, device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    all_scores = []
    cur_len = G.PROMPT_LENGTH
    while True:
        scores = apply_processors(p.processors, seqs[:, :cur_len],
                                  step(seqs[:, cur_len - 1], cur_len))  # (N, V)
        if p.output_scores:
            all_scores.append(scores)
        if p.do_sample:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = scores.argmax(-1)  # (N,)
        if p.eos_token_ids:
            nxt = torch.where(unfinished, nxt, p.pad_token_id)
            unfinished &= ~torch.isin(nxt, eos)
        seqs[:, cur_len] = nxt
        cur_len += 1
        if cur_len >= p.max_length or (p.eos_token_ids and not unfinished.any()):
            break  # the one host synchronisation per step
    return G.make_output(p, seqs[:, :cur_len], scores=all_scores)


class _Beams(NamedTuple):
    """Beam-search state, as `encdec.core.generation.BeamState` (B examples, K beams)."""

    running_sequences: Tensor  # (B, K, L) long
    running_scores: Tensor  # (B, K) fp32
    running_beam_indices: Tensor  # (B, K, L - 1) long
    sequences: Tensor  # (B, K, L) long, finished hypotheses
    scores: Tensor  # (B, K) fp32
    beam_indices: Tensor  # (B, K, L - 1) long
    is_sent_finished: Tensor  # (B, K) bool
    improvable: Tensor  # (B, 1) bool


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """Gather along dim 1 (beams) with idx (B, k) for t (B, K, ...)."""
    return torch.take_along_dim(t, idx.view(*idx.shape, *(1,) * (t.dim() - 2)), dim=1)


def _beam_init(p: G.GenerationPlan, b: int, device: torch.device) -> _Beams:
    k, L = p.num_beams, p.max_length
    seqs = torch.full((b, k, L), p.beam_fill_token_id, dtype=torch.long, device=device)
    seqs[:, :, 0] = p.decoder_start_token_id
    running_scores = torch.zeros(b, k, device=device)
    running_scores[:, 1:] = G.BEAM_NEG
    idx = torch.full((b, k, L - G.PROMPT_LENGTH), -1, dtype=torch.long, device=device)
    return _Beams(seqs, running_scores, idx, seqs.clone(),
                  torch.full((b, k), G.BEAM_NEG, device=device), idx.clone(),
                  torch.zeros(b, k, dtype=torch.bool, device=device),
                  torch.ones(b, 1, dtype=torch.bool, device=device))


def _beam_step(p: G.GenerationPlan, s: _Beams, log_probs: Tensor, cur_len: int, eos: Tensor,
               generator: torch.Generator | None) -> tuple[_Beams, Tensor, Tensor]:
    """`encdec.core.generation.beam_step` in torch -> (state, reorder (B*K,), done (bool))."""
    b, k = s.running_scores.shape
    v = log_probs.shape[-1]
    keep = p.beams_to_keep
    acc = (log_probs.view(b, k, v) + s.running_scores[:, :, None]).view(b, k * v)

    if p.do_sample:
        top = torch.multinomial(acc.softmax(-1), keep, generator=generator)  # (B, 2K)
        top_scores, order = acc.gather(1, top).sort(-1, descending=True)
        top = top.gather(1, order)
    else:
        top_scores, top = torch.topk(acc, keep)  # (B, 2K)
    src_beam, token = top // v, top % v
    cand_seqs = _take(s.running_sequences, src_beam)  # (B, 2K, L)
    cand_seqs[:, :, cur_len] = token
    cand_idx = _take(s.running_beam_indices, src_beam)
    batch_offset = torch.arange(b, device=acc.device)[:, None] * k  # (B, 1)
    cand_idx[:, :, cur_len - G.PROMPT_LENGTH] = src_beam + batch_offset
    hits = torch.isin(token, eos) | (cur_len + 1 >= p.max_length)  # (B, 2K)

    alive_scores = top_scores + hits.float() * G.BEAM_NEG
    nxt = torch.topk(alive_scores, k)[1]  # (B, K)
    running_sequences = _take(cand_seqs, nxt)
    running_scores = _take(alive_scores, nxt)
    running_beam_indices = _take(cand_idx, nxt)

    top_mask = torch.arange(keep, device=acc.device) < k
    just_finished = hits & top_mask[None, :]
    fin_scores = top_scores / ((cur_len + 1 - G.PROMPT_LENGTH) ** p.length_penalty)
    full = s.is_sent_finished.all(-1, keepdim=True) & (p.early_stopping is True)
    fin_scores = fin_scores + full.float() * G.BEAM_NEG
    fin_scores = fin_scores + (~s.improvable).float() * G.BEAM_NEG
    fin_scores = fin_scores + (~just_finished).float() * G.BEAM_NEG
    merged_scores = torch.cat([s.scores, fin_scores], 1)  # (B, 3K)
    best = torch.topk(merged_scores, k)[1]
    sequences = _take(torch.cat([s.sequences, cand_seqs], 1), best)
    scores = _take(merged_scores, best)
    beam_indices = _take(torch.cat([s.beam_indices, cand_idx], 1), best)
    is_sent_finished = _take(torch.cat([s.is_sent_finished, just_finished], 1), best)

    new_len = cur_len + 1
    if p.early_stopping == "never" and p.length_penalty > 0.0:
        best_len = p.max_length - G.PROMPT_LENGTH
    else:
        best_len = new_len - G.PROMPT_LENGTH
    best_running = running_scores[:, :1] / (best_len ** p.length_penalty)  # (B, 1)
    worst_finished = torch.where(is_sent_finished, scores.min(1, keepdim=True)[0], G.BEAM_NEG)
    improvable = s.improvable & (best_running > worst_finished).any(-1, keepdim=True)
    open_beam = ~(is_sent_finished.all() & (p.early_stopping is True))
    done = ~(improvable.any() & open_beam & ~hits.all())

    reorder = running_beam_indices[:, :, cur_len - G.PROMPT_LENGTH].reshape(-1)  # (B*K,)
    new = _Beams(running_sequences, running_scores, running_beam_indices, sequences, scores,
                 beam_indices, is_sent_finished, improvable)
    return new, reorder, done


def _beam_search(p: G.GenerationPlan, step: _Decoder, batch: int, device: torch.device,
                 generator: torch.Generator | None) -> Tensor | Any:
    s = _beam_init(p, batch, device)
    eos = torch.tensor(p.eos_token_ids, dtype=torch.long, device=device)
    rows = batch * p.num_beams
    all_scores = []
    cur_len = G.PROMPT_LENGTH
    while True:
        ids = s.running_sequences[:, :, :cur_len].reshape(rows, cur_len)
        log_probs = apply_processors(p.processors, ids,
                                     step(ids[:, -1], cur_len).log_softmax(-1))  # (B*K, V)
        if p.output_scores:
            all_scores.append(log_probs)
        s, reorder, done = _beam_step(p, s, log_probs, cur_len, eos, generator)
        cur_len += 1
        if bool(done):  # the one host synchronisation per step
            break
        step.reorder(reorder, cur_len - 1)

    r = p.num_return_sequences
    seqs = s.sequences[:, :r].reshape(batch * r, -1)
    idx = s.beam_indices[:, :r].reshape(batch * r, -1)
    generated = int((idx != -1).sum(1).max())
    return G.make_output(p, seqs[:, :G.PROMPT_LENGTH + generated], scores=all_scores,
                         sequences_scores=s.scores[:, :r].reshape(-1),
                         beam_indices=idx[:, :generated])

"""The layers every family shares: `Attention` (self and cross), its masks and cache types
(`Past`), the leaf layers (`Conv1D`, activations, `Container`) and the losses.

Follows transformers' `BertSelfAttention` / `BertCrossAttention` / `DistilBertSelfAttention` /
`GPT2Attention` (the projections named by `encdec.core.registry.AttentionNames`) with the
reference's default SDPA masks: padding masks act on keys only, the decoder's padding mask is
and-ed with the causal mask, and a query row with no visible key outputs zeros (what the
reference's boolean SDPA mask gives). Masks are additive with fill `finfo(dtype).min`.

Two caches: the reference's legacy tuple `(k, v)` grown by concatenation (public forward), and
the fixed-size static cache of the decoding contract (`step_self` / `step_cross`). Decoding
projects q|k|v with one matmul (BERT's and BART's three weights concatenated once into a
`Derived` copy, rebuilt when a weight is replaced or changed in place) and, for one new token
at a Python-int position, attends over the filled prefix of the buffers without a mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encdec.core.config import ACTIVATIONS as ACTIVATION_NAMES
from encdec.core.registry import AttentionNames

# --- leaf layers --------------------------------------------------------------------------

def _gelu_new(x: Tensor) -> Tensor:  # transformers' NewGELUActivation (tanh approximation)
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
    return 0.5 * x * (1.0 + torch.tanh(inner))


# core's activation names (`encdec.core.config.ACTIVATIONS`, what a config accepts), in its
# order: exact erf GELU, tanh-approximate GELU (two names), ReLU, SiLU (two names: Marian's
# "swish")
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = dict(zip(ACTIVATION_NAMES, (
    F.gelu,
    _gelu_new,
    lambda x: F.gelu(x, approximate="tanh"),
    F.relu,
    F.silu,
    F.silu,
), strict=True))


class Conv1D(nn.Module):
    """GPT-2's Conv1D: a linear layer whose weight is stored `(in, out)`."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)  # (N, out)
        return out.view(*x.shape[:-1], -1)


class Derived:
    """A tensor derived from others (fused decoding weights, a padding mask), rebuilt when any
    source is replaced, moved (`.to`, `.data = ...`) or changed in place (an optimizer step,
    `load_state_dict`): keyed on the sources' identity, version counter and storage. Inference
    tensors have no version counter: the value is then built on every call, never cached."""

    __slots__ = ("key", "sources", "value")

    def __init__(self):
        self.key, self.sources, self.value = None, (), None

    def get(self, sources: tuple[Tensor, ...], build: Callable[[], object], extra=()) -> object:
        try:
            key = (*((t._version, t.data_ptr()) for t in sources), *extra)
        except RuntimeError:  # an inference tensor: no version counter to key on
            return build()
        if key != self.key or len(sources) != len(self.sources) \
                or any(a is not b for a, b in zip(sources, self.sources, strict=True)):
            with torch.inference_mode(False), torch.no_grad():
                self.value = build()
            self.key, self.sources = key, sources
        return self.value


class Container(nn.Module):
    """An empty module holding a model's parts at the reference's dotted names (`model` of
    `BartForCausalLM`, `cls.predictions` of an LM head)."""


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy (fp32) over positions whose label is not -100, as torch's
    `CrossEntropyLoss()`; logits (..., V), labels (...)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The reference's causal-LM loss: predict token t+1 from t, mean over labels != -100."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


# --- caches -------------------------------------------------------------------------------

Past = tuple[Tensor, ...]  # one layer's legacy cache: (self_k, self_v[, cross_k, cross_v]),
# each (B, h, T, d)


def split_past(past: Past | None) -> tuple[Past | None, Past | None]:
    """One layer's legacy cache -> (self (k, v) or None, cross (k, v) or None). Whether a
    layer cross-attends is decided by the encoder states alone, as the reference: a cross
    cache without encoder states is not used."""
    if past is None:
        return None, None
    return past[:2], (past[2:] if len(past) == 4 else None)


# --- masks --------------------------------------------------------------------------------

class Mask(NamedTuple):
    """An additive attention bias and, when rows can be fully masked, which rows keep output."""

    bias: Tensor  # (B|1, 1, Tq, Tk): 0 where allowed, finfo(dtype).min elsewhere
    keep: Tensor | None  # (B|1, 1, Tq, 1) 1.0 where the row sees some key, else 0.0


def make_mask(allowed: Tensor, dtype: torch.dtype, *, may_be_empty: bool) -> Mask:
    """Boolean `allowed` (.., Tq, Tk) -> `Mask`; `may_be_empty` when padding is involved."""
    fill = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    bias = torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), fill)
    keep = allowed.any(-1, keepdim=True).to(dtype) if may_be_empty else None
    return Mask(bias, keep)


def causal_mask(batch: int, q_len: int, past: int | Tensor, kv_len: int, dtype: torch.dtype,
                padding: Tensor | None = None, device: torch.device | None = None) -> Mask:
    """Key p is visible to query t iff p <= past + t and (p is not padding); padding (B, kv_len)."""
    q = torch.arange(q_len, device=device) + past  # (Tq,)
    k = torch.arange(kv_len, device=device)  # (Tk,)
    allowed = (k[None, :] <= q[:, None])[None, None]  # (1, 1, Tq, Tk)
    if padding is not None:
        allowed = allowed & padding.bool()[:, None, None, :kv_len]  # (B, 1, Tq, Tk)
    return make_mask(allowed, dtype, may_be_empty=padding is not None)


def padding_mask(padding: Tensor | None, dtype: torch.dtype) -> Mask | None:
    """Bidirectional key-padding mask (B, S) -> Mask (B, 1, 1, S); None without padding."""
    if padding is None:
        return None
    return make_mask(padding.bool()[:, None, None, :], dtype, may_be_empty=True)


def step_masks(memo: Derived, batch: int, q_len: int, cache_index: int | Tensor, max_len: int,
               dtype: torch.dtype, decoder_padding: Tensor | None,
               encoder_padding: Tensor | None, device: torch.device
               ) -> tuple[Mask | None, Mask | None]:
    """The self- and cross-attention masks of a static-cache decoding step, for every family.

    Self: None for one token at a Python-int index without padding (`Attention.step_self` then
    attends over the filled prefix), else `causal_mask` over the max_len buffer positions.
    Cross: `padding_mask`, built once per mask tensor (`memo`): None when nothing is padded
    (adding a zero bias changes nothing), no `keep` when every row sees a key (one host check
    per mask, not per step); rebuilt every call under tracing / torch.compile."""
    if q_len == 1 and isinstance(cache_index, int) and decoder_padding is None:
        self_mask = None
    else:
        self_mask = causal_mask(batch, q_len, cache_index, max_len, dtype, decoder_padding, device)
    if encoder_padding is None:
        return self_mask, None
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return self_mask, padding_mask(encoder_padding, dtype)

    def build() -> Mask | None:
        allowed = encoder_padding.bool()
        if bool(allowed.all()):
            return None
        mask = padding_mask(encoder_padding, dtype)
        return mask._replace(keep=None) if bool(allowed.any(-1).all()) else mask

    return self_mask, memo.get((encoder_padding,), build, extra=(dtype,))


# --- attention ----------------------------------------------------------------------------

def attend(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, *, scale: float,
           dropout: float = 0.0, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T * scale + bias) v; q (B, h, T, d), k/v (B, h, S, d) -> (B, h, T, d)."""
    bias = None if mask is None else mask.bias
    if output_attentions:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, h, T, S)
        if bias is not None:
            scores = scores + bias
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        if mask is not None and mask.keep is not None:
            probs = probs * mask.keep
        out = torch.matmul(F.dropout(probs, dropout, training=dropout > 0), v)
        return out, probs
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
    if mask is not None and mask.keep is not None:
        out = out * mask.keep
    return out, None


class Attention(nn.Module):
    """Multi-head attention, self or cross, building exactly the projections `names` lists
    (`query`/`key`/`value`, or a fused `c_attn` [+ `q_attn`]; an owned output projection
    `out_lin` / `c_proj` when named, else the caller owns it as BERT's `attention.output`)."""

    def __init__(self, hidden_size: int, num_heads: int, names: AttentionNames, *, cross: bool,
                 dropout: float = 0.0, resid_dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        self.names, self.cross = names, cross
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.hidden_size = hidden_size
        self.scale = self.head_dim ** -0.5 if scale is None else scale
        self.dropout = dropout
        self._qkv = Derived()  # decoding's fused q|k|v weight and bias (not a parameter)
        layer = Conv1D if names.conv1d else nn.Linear
        h = hidden_size
        if names.fused:  # q|k|v, or k|v when the queries have their own projection
            setattr(self, names.fused, layer(h, (2 if names.query else 3) * h))
        for name in (names.query, names.key, names.value, names.out):
            if name:
                setattr(self, name, layer(h, h))
        if names.resid_dropout:
            self.resid_dropout = nn.Dropout(resid_dropout)

    def _heads(self, x: Tensor) -> Tensor:  # (B, T, h*d) -> (B, h, T, d)
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim).transpose(1, 2)

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:  # the fused projection's parts, as heads
        parts = getattr(self, self.names.fused)(x).split(self.hidden_size, dim=2)
        return tuple(self._heads(t) for t in parts)

    def project_q(self, x: Tensor) -> Tensor:
        """Queries (B, h, T, d) from the query projection."""
        return self._heads(getattr(self, self.names.query)(x))

    def project_kv(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, h, S, d) from the attended states (cross-attention)."""
        n = self.names
        if n.fused:
            return self._split(states)
        k, v = getattr(self, n.key)(states), getattr(self, n.value)(states)  # (B, S, hidden)
        return self._heads(k), self._heads(v)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values (B, h, T, d) of a self-attention."""
        if self.names.fused and not self.names.query:
            return self._split(x)  # GPT-2's fused projection
        return (self.project_q(x), *self.project_kv(x))

    def _qkv_weights(self) -> tuple[Tensor, Tensor]:
        """Decoding's q|k|v projection as one (hidden, 3 hidden) weight and its bias: GPT-2's
        `c_attn` itself, else the three Linears' weights concatenated once (a `Derived`)."""
        n = self.names
        if n.fused:
            fused = getattr(self, n.fused)
            return fused.weight, fused.bias
        mods = [getattr(self, name) for name in (n.query, n.key, n.value)]
        sources = (*(m.weight for m in mods), *(m.bias for m in mods))
        return self._qkv.get(sources, lambda: (torch.cat([m.weight for m in mods]).t().contiguous(),
                                               torch.cat([m.bias for m in mods])))

    def _out(self, ctx: Tensor) -> Tensor:  # (B, h, T, d) -> (B, T, hidden)
        out = ctx.transpose(1, 2).reshape(ctx.shape[0], ctx.shape[2], self.hidden_size)
        if self.names.out:
            out = getattr(self, self.names.out)(out)
        if self.names.resid_dropout:
            out = self.resid_dropout(out)
        return out

    def forward(self, x: Tensor, mask: Mask | None = None, *, states: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None, output_attentions: bool = False,
                ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """x (B, T, hidden) -> (out (B, T, hidden), attention probs or None, (k, v) for the cache).

        Self-attention appends its new keys/values to `past`; cross-attention reuses `past`
        when given, else projects `states` (B, S, hidden).
        """
        if self.cross:
            q = self.project_q(x)
            k, v = past if past is not None else self.project_kv(states)
        else:
            q, k, v = self.project_qkv(x)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        dropout = self.dropout if self.training else 0.0
        ctx, probs = attend(q, k, v, mask, scale=self.scale, dropout=dropout,
                            output_attentions=output_attentions)
        return self._out(ctx), probs, (k, v)

    # --- static cache (decoding contract) ------------------------------------------------

    def step_self(self, x: Tensor, k_buf: Tensor, v_buf: Tensor, cache_index: int | Tensor,
                  mask: Mask | None) -> tuple[Tensor, Tensor, Tensor]:
        """Write the T new keys/values at `cache_index` of the (B, h, max_len, d) buffers (in
        place) and attend over all max_len positions under `mask` (B|1, 1, T, max_len); with
        `mask` None (one token, a Python-int index) over the filled prefix, unmasked."""
        B, T, _ = x.shape
        w, b = self._qkv_weights()
        qkv = torch.addmm(b, x.reshape(B * T, -1), w)  # (B*T, 3 hidden): one matmul
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if isinstance(cache_index, int):  # slice writes (a tensor index: index_copy_, traced)
            end = cache_index + T
            k_buf[:, :, cache_index:end] = k
            v_buf[:, :, cache_index:end] = v
            if mask is None:
                ctx = F.scaled_dot_product_attention(q, k_buf[:, :, :end], v_buf[:, :, :end],
                                                     scale=self.scale)
                return self._out(ctx), k_buf, v_buf
        else:
            pos = torch.arange(T, device=x.device) + cache_index  # (T,)
            k_buf.index_copy_(2, pos, k.to(k_buf.dtype))
            v_buf.index_copy_(2, pos, v.to(v_buf.dtype))
        ctx, _ = attend(q, k_buf, v_buf, mask, scale=self.scale)
        return self._out(ctx), k_buf, v_buf

    def step_cross(self, x: Tensor, k: Tensor, v: Tensor, mask: Mask | None) -> Tensor:
        """Cross-attention against precomputed k/v (Be, h, S, d) for B = Be * beams queries;
        beams of one example attend together, k/v are never repeated or reordered."""
        q = self.project_q(x)  # (B, h, T, d)
        B, h, T, d = q.shape
        be = k.shape[0]
        beams = B // be
        if beams == 1:
            return self._out(attend(q, k, v, mask, scale=self.scale)[0])
        q = q.view(be, beams, h, T, d).transpose(1, 2).reshape(be, h, beams * T, d)
        ctx, _ = attend(q, k, v, mask, scale=self.scale)  # (Be, h, beams*T, d)
        ctx = ctx.view(be, h, beams, T, d).transpose(1, 2).reshape(B, h, T, d)
        return self._out(ctx)

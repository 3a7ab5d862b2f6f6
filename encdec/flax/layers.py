"""The layers every family shares in the Flax NNX backend: the one `Attention` (self and cross;
projections named by the registry's `AttentionNames`), its masks and cache types (`Past`), the
leaf layers (`dense`, `layer_norm`, `embed`, `LMDecoder`, `Container`, activations) and the
losses.

Follows transformers' `BertSelfAttention` / `DistilBertSelfAttention` / `GPT2Attention` with the
reference's default SDPA masks: padding masks act on keys only, the decoder's padding mask is
and-ed with the causal mask, and a query row with no visible key outputs zeros (what the
reference's boolean SDPA mask gives). Masks are additive with fill `finfo(dtype).min`; softmax
runs in fp32; matmuls use `Precision.HIGHEST` so that accelerators do not drop to tf32/bf16.

Two caches: the reference's legacy tuple `(k, v)` grown by concatenation (public forward), and
the fixed-size static cache of the decoding contract (`step_self` / `step_cross`), written with
`lax.dynamic_update_slice` at a (possibly traced) `cache_index`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core.config import ACTIVATIONS as ACTIVATION_NAMES
from encdec.core.registry import AttentionNames

PRECISION = jax.lax.Precision.HIGHEST


# --- leaf layers --------------------------------------------------------------------------

def _gelu_new(x: jax.Array) -> jax.Array:  # transformers' NewGELUActivation (tanh approximation)
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3.0))))


# core's activation names (`encdec.core.config.ACTIVATIONS`, what a config accepts), in its
# order: exact erf GELU, tanh-approximate GELU (two names), ReLU, SiLU (two names: Marian's
# "swish")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = dict(zip(ACTIVATION_NAMES, (
    lambda x: jax.nn.gelu(x, approximate=False),
    _gelu_new,
    lambda x: jax.nn.gelu(x, approximate=True),
    jax.nn.relu,
    jax.nn.silu,
    jax.nn.silu,
), strict=True))


def default_rngs(rngs: nnx.Rngs | None) -> nnx.Rngs:
    """The RNG streams a model is built with: `nnx.Rngs(0)` unless given."""
    return nnx.Rngs(0) if rngs is None else rngs


def dense(n_in: int, n_out: int, *, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    """A Linear (kernel (in, out)); also GPT-2's Conv1D, whose weight is stored (in, out).
    Built with zeros: the reference's initial values come from `params.init_params`."""
    return nnx.Linear(n_in, n_out, use_bias=use_bias, precision=PRECISION,
                      kernel_init=nnx.initializers.zeros_init(), rngs=rngs)


def layer_norm(size: int, eps: float, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch's LayerNorm: two-pass variance (not E[x^2] - E[x]^2), epsilon from the config."""
    return nnx.LayerNorm(size, epsilon=eps, use_fast_variance=False, rngs=rngs)


def embed(num: int, size: int, *, rngs: nnx.Rngs) -> nnx.Embed:
    """An embedding table (num, size), zeros until `params.init_params`."""
    return nnx.Embed(num, size, embedding_init=nnx.initializers.zeros_init(), rngs=rngs)


class LMDecoder(nnx.Module):
    """An LM head's vocabulary projection (`decoder`, `generator_lm_head`): its own `kernel`
    (in, vocab), or, when the weight table ties it to the word embeddings, none: the caller
    passes that (vocab, in) matrix (so the Variable keeps its owner's path); plus a `bias`
    (vocab,), which `params.tie_params` may make another Variable (RoBERTa's `lm_head.bias`)."""

    def __init__(self, n_in: int, vocab: int, *, tied: bool, rngs: nnx.Rngs):
        self.tied = tied
        self.kernel = None if tied else nnx.Param(jnp.zeros((n_in, vocab)))
        self.bias = nnx.Param(jnp.zeros((vocab,)))

    def __call__(self, x: jax.Array, embedding: jax.Array | None = None) -> jax.Array:
        """x (B, T, in) -> logits (B, T, V); `embedding` (V, in) when tied."""
        if self.tied:
            logits = jnp.einsum("...i,vi->...v", x, embedding, precision=PRECISION)
        else:
            logits = jnp.einsum("...i,iv->...v", x, self.kernel[...], precision=PRECISION)
        return logits + self.bias[...]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """torch's `CrossEntropyLoss()`: mean token cross-entropy over labels != -100 (fp32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (..., V)
    keep = labels != -100
    picked = jnp.take_along_axis(logp, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(keep, picked, 0.0)) / jnp.sum(keep)


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The reference's causal-LM loss: predict token t+1 from t, mean over labels != -100."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


class Container(nnx.Module):
    """An empty module holding a model's parts at the reference's dotted names (`model` of
    `BartForCausalLM`, `cls.predictions` of an LM head)."""


# --- caches -------------------------------------------------------------------------------

Past = tuple[jax.Array, ...]  # one layer's legacy cache: (self_k, self_v[, cross_k, cross_v]),
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

    bias: jax.Array  # (B|1, 1, Tq, Tk): 0 where allowed, finfo(dtype).min elsewhere
    keep: jax.Array | None  # (B|1, 1, Tq, 1) 1.0 where the row sees some key, else 0.0


def make_mask(allowed: jax.Array, dtype: jnp.dtype, *, may_be_empty: bool) -> Mask:
    """Boolean `allowed` (.., Tq, Tk) -> `Mask`; `may_be_empty` when padding is involved."""
    bias = jnp.where(allowed, jnp.zeros((), dtype), jnp.finfo(dtype).min)
    keep = jnp.any(allowed, axis=-1, keepdims=True).astype(dtype) if may_be_empty else None
    return Mask(bias, keep)


def causal_mask(batch: int, q_len: int, past: int | jax.Array, kv_len: int, dtype: jnp.dtype,
                padding: jax.Array | None = None) -> Mask:
    """Key p is visible to query t iff p <= past + t and (p is not padding); padding (B, kv_len)."""
    q = jnp.arange(q_len) + past  # (Tq,)
    k = jnp.arange(kv_len)  # (Tk,)
    allowed = (k[None, :] <= q[:, None])[None, None]  # (1, 1, Tq, Tk)
    if padding is not None:
        allowed = allowed & (padding[:, None, None, :kv_len] != 0)  # (B, 1, Tq, Tk)
    return make_mask(allowed, dtype, may_be_empty=padding is not None)


def padding_mask(padding: jax.Array | None, dtype: jnp.dtype) -> Mask | None:
    """Bidirectional key-padding mask (B, S) -> Mask (B, 1, 1, S); None without padding."""
    if padding is None:
        return None
    return make_mask((padding != 0)[:, None, None, :], dtype, may_be_empty=True)



def step_masks(batch: int | jax.Array, q_len: int | jax.Array, cache_index: int | jax.Array,
               max_len: int, dtype, decoder_padding: jax.Array | None,
               encoder_padding: jax.Array | None) -> tuple[Mask, Mask | None]:
    """The self- and cross-attention masks of a static-cache decoding step, for every family:
    `causal_mask` over the max_len buffer positions (and-ed with the decoder's padding) and the
    encoder's `padding_mask` (None without one)."""
    return (causal_mask(batch, q_len, cache_index, max_len, dtype, decoder_padding),
            padding_mask(encoder_padding, dtype))

# --- attention ----------------------------------------------------------------------------

def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | None, *, scale: float,
           dropout: nnx.Dropout | None = None,
           output_attentions: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """softmax(q k^T * scale + bias) v; q (B, h, T, d), k/v (B, h, S, d) -> (B, h, T, d), and
    the attention probabilities (B, h, T, S) when `output_attentions`."""
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k, precision=PRECISION) * scale  # (B, h, T, S)
    if mask is not None:
        scores = scores + mask.bias
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    if mask is not None and mask.keep is not None:
        probs = probs * mask.keep
    dropped = probs if dropout is None else dropout(probs)
    out = jnp.einsum("bhts,bhsd->bhtd", dropped, v, precision=PRECISION)
    return out, probs if output_attentions else None


def attend_cached(q: jax.Array, k_buf: jax.Array, v_buf: jax.Array, k: jax.Array, v: jax.Array,
                  cache_index: int | jax.Array, mask: Mask, *, scale: float) -> jax.Array:
    """`attend` over a static cache before it is written: the keys/values (B, h, L, d) of
    `k_buf`/`v_buf` before `cache_index` and the T new ones `k`/`v` (B, h, T, d), which belong at
    `cache_index` + arange(T), under `mask` (B|1, 1, T, L) of the written cache. One softmax over
    both parts; the caller writes k/v into the buffers afterwards, so that the written buffers
    are never read in the same step and a compiled loop updates them in place (reading them
    back made XLA copy every cache buffer each step)."""
    at = jnp.asarray(cache_index, jnp.int32)
    T, L = q.shape[2], k_buf.shape[2]
    bias = jnp.concatenate([  # (B|1, 1, T, L + T): the old positions, then the new ones
        jnp.where(jnp.arange(L) < at, mask.bias, jnp.finfo(mask.bias.dtype).min),
        jax.lax.dynamic_slice_in_dim(mask.bias, at, T, axis=-1)], axis=-1)
    scores = jnp.concatenate([jnp.einsum("bhtd,bhsd->bhts", q, k_buf, precision=PRECISION),
                              jnp.einsum("bhtd,bhsd->bhts", q, k, precision=PRECISION)], axis=-1)
    probs = jax.nn.softmax((scores * scale + bias).astype(jnp.float32), axis=-1).astype(v.dtype)
    if mask.keep is not None:
        probs = probs * mask.keep
    return (jnp.einsum("bhts,bhsd->bhtd", probs[..., :L], v_buf, precision=PRECISION)
            + jnp.einsum("bhts,bhsd->bhtd", probs[..., L:], v, precision=PRECISION))


class Attention(nnx.Module):
    """Multi-head attention, self or cross, building exactly the projections `names` lists
    (`query`/`key`/`value`, or a fused `c_attn` [+ `q_attn`]; an owned output projection
    `out_lin` / `c_proj` when named, else the caller owns it as BERT's `attention.output`).
    Initial values come from the registry's init rules (`params.init_params`)."""

    def __init__(self, hidden_size: int, num_heads: int, names: AttentionNames, *, cross: bool,
                 dropout: float = 0.0, resid_dropout: float = 0.0, scale: float | None = None,
                 rngs: nnx.Rngs):
        self.names, self.cross = names, cross
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.hidden_size = hidden_size
        self.scale = self.head_dim ** -0.5 if scale is None else scale
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        h = hidden_size
        if names.fused:  # q|k|v, or k|v when the queries have their own projection
            setattr(self, names.fused, dense(h, (2 if names.query else 3) * h, rngs=rngs))
        for name in (names.query, names.key, names.value, names.out):
            if name:
                setattr(self, name, dense(h, h, rngs=rngs))
        self.resid_dropout = nnx.Dropout(resid_dropout, rngs=rngs) if names.resid_dropout \
            else None

    def _heads(self, x: jax.Array) -> jax.Array:  # (B, T, h*d) -> (B, h, T, d)
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _split(self, x: jax.Array) -> tuple[jax.Array, ...]:  # the fused projection's parts
        parts = jnp.split(getattr(self, self.names.fused)(x), 2 if self.names.query else 3,
                          axis=-1)
        return tuple(self._heads(t) for t in parts)

    def project_q(self, x: jax.Array) -> jax.Array:
        """Queries (B, h, T, d) from the query projection."""
        return self._heads(getattr(self, self.names.query)(x))

    def project_kv(self, states: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values (B, h, S, d) from the attended states (cross-attention)."""
        n = self.names
        if n.fused:
            return self._split(states)
        k, v = getattr(self, n.key)(states), getattr(self, n.value)(states)  # (B, S, hidden)
        return self._heads(k), self._heads(v)

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values (B, h, T, d) of a self-attention."""
        if self.names.fused and not self.names.query:
            return self._split(x)  # GPT-2's fused projection
        return (self.project_q(x), *self.project_kv(x))

    def _out(self, ctx: jax.Array) -> jax.Array:  # (B, h, T, d) -> (B, T, hidden)
        out = ctx.transpose(0, 2, 1, 3).reshape(ctx.shape[0], ctx.shape[2], self.hidden_size)
        if self.names.out:
            out = getattr(self, self.names.out)(out)
        if self.resid_dropout is not None:
            out = self.resid_dropout(out)
        return out

    def __call__(self, x: jax.Array, mask: Mask | None = None, *, states: jax.Array | None = None,
                 past: tuple[jax.Array, jax.Array] | None = None, output_attentions: bool = False,
                 ) -> tuple[jax.Array, jax.Array | None, tuple[jax.Array, jax.Array]]:
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
                k = jnp.concatenate([past[0], k], axis=2)  # (B, h, past + T, d)
                v = jnp.concatenate([past[1], v], axis=2)
        ctx, probs = attend(q, k, v, mask, scale=self.scale, dropout=self.dropout,
                            output_attentions=output_attentions)
        return self._out(ctx), probs, (k, v)

    # --- static cache (decoding contract) ------------------------------------------------

    def step_self(self, x: jax.Array, k_buf: jax.Array, v_buf: jax.Array,
                  cache_index: int | jax.Array,
                  mask: Mask) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Write the T new keys/values at `cache_index` of the (B, h, max_len, d) buffers and
        attend over all max_len positions under `mask` (B|1, 1, T, max_len)."""
        q, k, v = self.project_qkv(x)  # (B, h, T, d)
        k, v = k.astype(k_buf.dtype), v.astype(v_buf.dtype)
        ctx = attend_cached(q, k_buf, v_buf, k, v, cache_index, mask, scale=self.scale)
        at = (0, 0, jnp.asarray(cache_index, jnp.int32), 0)
        k_buf = jax.lax.dynamic_update_slice(k_buf, k, at)
        v_buf = jax.lax.dynamic_update_slice(v_buf, v, at)
        return self._out(ctx), k_buf, v_buf

    def step_cross(self, x: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | None) -> jax.Array:
        """Cross-attention against precomputed k/v (Be, h, S, d) for B = Be * beams queries;
        beams of one example attend together, k/v are never repeated or reordered."""
        q = self.project_q(x)  # (B, h, T, d)
        B, h, T, d = q.shape
        be = k.shape[0]
        beams = B // be
        q = q.reshape(be, beams, h, T, d).transpose(0, 2, 1, 3, 4).reshape(be, h, beams * T, d)
        ctx, _ = attend(q, k, v, mask, scale=self.scale)  # (Be, h, beams*T, d)
        ctx = ctx.reshape(be, h, beams, T, d).transpose(0, 2, 1, 3, 4).reshape(B, h, T, d)
        return self._out(ctx)

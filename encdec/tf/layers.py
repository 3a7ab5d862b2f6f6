"""The layers every family shares in the Keras backend: `Attention` (self and cross; its
projections named by the registry's `AttentionNames`), its masks and cache types (`Past`), the
leaf layers and numerics (activations, `dense`, embeddings, `LMDecoder`, `Container`) and the
losses.

Follows transformers' `BertSelfAttention` / `DistilBertSelfAttention` / `GPT2Attention` with the
reference's default SDPA masks: padding masks act on keys only, the decoder's padding mask is
and-ed with the causal mask, and a query row with no visible key outputs zeros (what the
reference's boolean SDPA mask gives). Masks are additive with fill `dtype.min`; softmax in fp32.

Two caches: the reference's legacy tuple `(k, v)` grown by concatenation (public forward), and
the fixed-size static cache of the decoding contract (`step_self` / `step_cross`), written with
a dynamic-update-slice so that it traces under `tf.function(jit_compile=True)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from encdec.core.config import ACTIVATIONS as ACTIVATION_NAMES
from encdec.core.registry import AttentionNames
from encdec.core.seq2seq import IGNORE_INDEX

# --- leaf numerics ------------------------------------------------------------------------


def _gelu_new(x: tf.Tensor) -> tf.Tensor:  # transformers' NewGELUActivation (tanh approximation)
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3.0))))


# core's activation names (`encdec.core.config.ACTIVATIONS`, what a config accepts), in its
# order: exact erf GELU, tanh-approximate GELU (two names), ReLU, SiLU (two names: Marian's
# "swish")
ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = dict(zip(ACTIVATION_NAMES, (
    lambda x: tf.nn.gelu(x, approximate=False),
    _gelu_new,
    lambda x: tf.nn.gelu(x, approximate=True),
    tf.nn.relu,
    tf.nn.silu,
    tf.nn.silu,
), strict=True))


def add_bias(x: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """`x + bias`, written `x - (-bias)` (the same bits: IEEE subtraction of a negation is the
    addition), so that XLA's CPU compiler keeps a matrix-vector dot before it a plain dot
    instead of fusing the add into it ("output fusion"): the fused gemv ran bert-base-sized
    matrices at ~0.75x the plain one's bandwidth (15 vs 20 GB/s), and batch-1 decoding is
    made of such dots."""
    return x - (-bias)


class Dense(keras.layers.Dense):
    """`keras.layers.Dense` whose bias is added by `add_bias`."""

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = keras.ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            x = add_bias(x, self.bias)
        return x if self.activation is None else self.activation(x)


def dense(units: int, name: str, use_bias: bool = True) -> Dense:
    """A Linear / GPT-2 Conv1D: kernel (in, out). Created as zeros: `params.init_params` draws
    the reference's init from the registry's data once the model is built."""
    return Dense(units, use_bias=use_bias, kernel_initializer="zeros", name=name)


def layer_norm(eps: float, name: str) -> keras.layers.LayerNormalization:
    """A LayerNorm with the config's eps (never Keras' default)."""
    return keras.layers.LayerNormalization(epsilon=eps, name=name)


@tf.custom_gradient
def _take_rows(table: tf.Tensor, ids: tf.Tensor):
    """`table[ids]` whose gradient is the dense (num, dim) sum per row, as torch's embedding
    gives: TF's own gather gradient is one slice per lookup (IndexedSlices), and Keras' Adam
    then squares each slice separately, so a row looked up n times moved up to sqrt(n) times
    the reference's step (token_type_embeddings: 5.2 lr against 1 lr in torch)."""

    def grad(dy: tf.Tensor):
        rows = tf.reshape(dy, (-1, tf.shape(table)[1]))
        return tf.math.unsorted_segment_sum(rows, tf.reshape(ids, (-1,)), tf.shape(table)[0]), None

    return tf.gather(table, ids), grad


class Embedding(keras.layers.Embedding):
    """Keras' `Embedding` with a dense gradient for its table (`_take_rows`)."""

    def call(self, inputs):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        out = _take_rows(tf.convert_to_tensor(self.embeddings), inputs)
        return tf.cast(out, self.compute_dtype)


def embed(num: int, dim: int, name: str) -> keras.layers.Embedding:
    """An embedding table (num, dim), created as zeros (see `dense`), with a dense gradient."""
    return Embedding(num, dim, embeddings_initializer="zeros", name=name)


class Block(keras.layers.Layer):
    """A layer whose `mask` argument is an attention `Mask`, not Keras' own masking: it hands
    no Keras mask on to its outputs (Keras would otherwise warn that the mask is dropped).
    Callers pass `mask=` by keyword: Keras fills a `mask` argument left None itself, which
    collides with a positional one."""

    def compute_mask(self, inputs, previous_mask):  # noqa: ARG002 - Keras' signature
        return None


class LMDecoder(keras.layers.Layer):
    """An LM head's vocabulary projection (`decoder`, `generator_lm_head`): its own `kernel`
    (in, vocab), or, when the weight table ties it to the word embeddings, none: the caller
    passes that (vocab, in) matrix (the reference's `decoder.weight` is that very tensor); plus
    a `bias` (vocab,), which `params.tie_params` may make another variable (RoBERTa's
    `lm_head.bias`)."""

    def __init__(self, n_in: int, vocab: int, *, tied: bool, **kwargs):
        super().__init__(**kwargs)
        self.tied = tied
        self.kernel = None if tied else self.add_weight(shape=(n_in, vocab),
                                                        initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(vocab,), initializer="zeros", name="bias")
        self.built = True

    def call(self, x: tf.Tensor, embedding: tf.Tensor | None = None) -> tf.Tensor:
        """x (B, T, in) -> logits (B, T, V); `embedding` (V, in) when tied."""
        if self.tied:
            return add_bias(self.tied_logits(x, embedding), self.bias)
        return add_bias(tf.einsum("bti,iv->btv", x, self.kernel), self.bias)

    @staticmethod
    def tied_logits(x: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
        """x (B, T, in) times a (V, in) embedding table, transposed -> (B, T, V).

        A 2-D matmul with `transpose_b`, not `einsum("bti,vi->btv")`: for a single row (batch-1
        decoding) XLA on CPU lowers that einsum to a copy of the whole table transposed to
        (in, V) on every call — 94 MB per decoding step for BERT's table, measured at 70% of
        the step — while this form reads the table in place at every batch size."""
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        rows = tf.reshape(x, [-1, x.shape[-1]])
        return tf.reshape(tf.matmul(rows, table, transpose_b=True), [b, t, table.shape[0]])


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean token cross-entropy (fp32) over positions whose label is not -100, as torch's
    `CrossEntropyLoss()`; logits (..., V), labels (...)."""
    labels = tf.cast(labels, tf.int32)
    keep = tf.not_equal(labels, IGNORE_INDEX)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.where(keep, labels, 0), tf.cast(logits, tf.float32))  # (...)
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(losses * keep) / tf.reduce_sum(keep)


def causal_lm_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The reference's causal-LM loss: predict token t+1 from t, mean over labels != -100."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


class Container(keras.layers.Layer):
    """A named node holding a model's parts at the reference's dotted names (`model` of
    `BartForCausalLM`, `cls.predictions` of an LM head)."""


# --- caches -------------------------------------------------------------------------------

Past = tuple[tf.Tensor, ...]  # one layer's legacy cache: (self_k, self_v[, cross_k, cross_v]),
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

    bias: tf.Tensor  # (B|1, 1, Tq, Tk): 0 where allowed, dtype.min elsewhere
    keep: tf.Tensor | None  # (B|1, 1, Tq, 1) 1.0 where the row sees some key, else 0.0


def make_mask(allowed: tf.Tensor, dtype: tf.DType, *, may_be_empty: bool) -> Mask:
    """Boolean `allowed` (.., Tq, Tk) -> `Mask`; `may_be_empty` when padding is involved."""
    bias = tf.where(allowed, tf.zeros((), dtype), tf.constant(dtype.min, dtype))
    keep = tf.cast(tf.reduce_any(allowed, -1, keepdims=True), dtype) if may_be_empty else None
    return Mask(bias, keep)


def causal_mask(batch: int | tf.Tensor, q_len: int | tf.Tensor, past: int | tf.Tensor,
                kv_len: int | tf.Tensor, dtype: tf.DType, padding: tf.Tensor | None = None) -> Mask:
    """Key p is visible to query t iff p <= past + t and (p is not padding); padding (B, kv_len).
    Without padding the mask broadcasts over the batch (`batch` names it, as in the others)."""
    q = tf.range(q_len) + tf.cast(past, tf.int32)  # (Tq,)
    k = tf.range(kv_len)  # (Tk,)
    allowed = (k[None, :] <= q[:, None])[None, None]  # (1, 1, Tq, Tk)
    if padding is not None:
        allowed = allowed & tf.cast(padding, tf.bool)[:, None, None, :]  # (B, 1, Tq, Tk)
    return make_mask(allowed, dtype, may_be_empty=padding is not None)


def padding_mask(padding: tf.Tensor | None, dtype: tf.DType) -> Mask | None:
    """Bidirectional key-padding mask (B, S) -> Mask (B, 1, 1, S); None without padding."""
    if padding is None:
        return None
    return make_mask(tf.cast(padding, tf.bool)[:, None, None, :], dtype, may_be_empty=True)



def step_masks(batch: int | tf.Tensor, q_len: int | tf.Tensor, cache_index: int | tf.Tensor,
               max_len: int, dtype, decoder_padding: tf.Tensor | None,
               encoder_padding: tf.Tensor | None) -> tuple[Mask, Mask | None]:
    """The self- and cross-attention masks of a static-cache decoding step, for every family:
    `causal_mask` over the max_len buffer positions (and-ed with the decoder's padding) and the
    encoder's `padding_mask` (None without one)."""
    return (causal_mask(batch, q_len, cache_index, max_len, dtype, decoder_padding),
            padding_mask(encoder_padding, dtype))

# --- attention ----------------------------------------------------------------------------

def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask: Mask | None, *, scale: float,
           dropout: keras.layers.Dropout | None = None, output_attentions: bool = False,
           ) -> tuple[tf.Tensor, tf.Tensor | None]:
    """softmax(q k^T * scale + bias) v: q (B, h, T, d), k/v (B, h, S, d) -> ((B, h, T, d),
    probs (B, h, T, S) or None); `dropout` on the probabilities (given only when training)."""
    scores = tf.matmul(q, k, transpose_b=True) * scale  # (B, h, T, S)
    if mask is not None:
        scores = scores + mask.bias
    probs = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), v.dtype)
    if mask is not None and mask.keep is not None:
        probs = probs * mask.keep
    dropped = dropout(probs, training=True) if dropout is not None else probs
    return tf.matmul(dropped, v), probs if output_attentions else None


def attend_cached(q: tf.Tensor, k_buf: tf.Tensor, v_buf: tf.Tensor, k: tf.Tensor, v: tf.Tensor,
                  cache_index: int | tf.Tensor, mask: Mask, *, scale: float) -> tf.Tensor:
    """`attend` over a static cache before it is written: the keys/values (B, h, L, d) of
    `k_buf`/`v_buf` before `cache_index` and the T new ones `k`/`v` (B, h, T, d), which belong at
    `cache_index` + arange(T), under `mask` (B|1, 1, T, L) of the written cache. One softmax over
    both parts; the caller writes k/v into the buffers afterwards, so that the written buffers
    are never read in the same step and a compiled loop updates them in place (reading them
    back made XLA copy every cache buffer twice per step)."""
    at = tf.cast(cache_index, tf.int32)
    t, length = q.shape[2], k_buf.shape[2]
    bias = tf.concat([  # (B|1, 1, T, L + T): the old positions, then the new ones
        tf.where(tf.range(length) < at, mask.bias, tf.constant(mask.bias.dtype.min,
                                                                 mask.bias.dtype)),
        tf.gather(mask.bias, at + tf.range(t), axis=3)], axis=3)
    scores = tf.concat([tf.matmul(q, k_buf, transpose_b=True),
                        tf.matmul(q, k, transpose_b=True)], axis=3) * scale  # (B, h, T, L + T)
    probs = tf.cast(tf.nn.softmax(tf.cast(scores + bias, tf.float32), axis=-1), v.dtype)
    if mask.keep is not None:
        probs = probs * mask.keep
    return tf.matmul(probs[..., :length], v_buf) + tf.matmul(probs[..., length:], v)


class Attention(Block):
    """Multi-head attention, self or cross, building exactly the projections an
    `AttentionNames` names: separate `query`/`key`/`value` (BERT, DistilBERT) or a fused one
    (GPT-2's `c_attn`: q|k|v, or k|v for cross-attention whose queries come from `query`),
    and an `out` projection when the attention owns it (DistilBERT's `out_lin`, GPT-2's
    `c_proj`; BERT's lives in its caller, `attention.output.dense`, as in the reference)."""

    def __init__(self, hidden_size: int, num_heads: int, names: AttentionNames, *, cross: bool,
                 dropout: float = 0.0, resid_dropout: float = 0.0, scale: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.names, self.cross = names, cross
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.hidden_size = hidden_size
        self.scale = self.head_dim ** -0.5 if scale is None else scale
        self.dropout = keras.layers.Dropout(dropout, name="dropout")
        if names.fused:  # q|k|v, or k|v beside a separate query for cross-attention
            setattr(self, names.fused, dense((2 if cross else 3) * hidden_size, names.fused))
        for proj in (names.query, names.key, names.value, names.out):
            if proj:
                setattr(self, proj, dense(hidden_size, proj))
        self.resid_dropout = keras.layers.Dropout(resid_dropout if names.resid_dropout else 0.0,
                                                  name="resid_dropout")
        self.built = True  # sublayers create their variables on the first call

    def _heads(self, x: tf.Tensor) -> tf.Tensor:  # (B, T, h*d) -> (B, h, T, d)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [b, t, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def _split(self, x: tf.Tensor) -> tuple[tf.Tensor, ...]:  # the fused projection's parts
        parts = tf.split(getattr(self, self.names.fused)(x), 2 if self.names.query else 3, axis=2)
        return tuple(self._heads(t) for t in parts)

    def project_q(self, x: tf.Tensor) -> tf.Tensor:
        """Queries (B, h, T, d) of a cross-attention (or of unfused self-attention)."""
        return self._heads(getattr(self, self.names.query)(x))

    def project_kv(self, states: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Keys and values (B, h, S, d) from the attended states (cross-attention)."""
        n = self.names
        if n.fused:
            return self._split(states)
        k, v = getattr(self, n.key)(states), getattr(self, n.value)(states)  # (B, S, hidden)
        return self._heads(k), self._heads(v)

    def project_qkv(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Queries, keys and values (B, h, T, d) of a self-attention."""
        if self.names.fused and not self.names.query:
            return self._split(x)  # GPT-2's fused projection
        return (self.project_q(x), *self.project_kv(x))

    def _out(self, ctx: tf.Tensor, training: bool = False) -> tf.Tensor:
        b, t = tf.shape(ctx)[0], tf.shape(ctx)[2]  # (B, h, T, d) -> (B, T, hidden)
        out = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [b, t, self.hidden_size])
        if self.names.out:
            out = self.resid_dropout(getattr(self, self.names.out)(out), training=training)
        return out

    def call(self, x: tf.Tensor, mask: Mask | None = None, *, states: tf.Tensor | None = None,
             past: tuple[tf.Tensor, tf.Tensor] | None = None, output_attentions: bool = False,
             training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None, tuple]:
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
                k, v = tf.concat([past[0], k], axis=2), tf.concat([past[1], v], axis=2)
        ctx, probs = attend(q, k, v, mask, scale=self.scale,
                            dropout=self.dropout if training else None,
                            output_attentions=output_attentions)
        return self._out(ctx, training), probs, (k, v)

    # --- static cache (decoding contract) ------------------------------------------------

    def step_self(self, x: tf.Tensor, k_buf: tf.Tensor, v_buf: tf.Tensor,
                  cache_index: int | tf.Tensor, mask: Mask,
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Write the T new keys/values at `cache_index` of the (B, h, max_len, d) buffers
        (dynamic-update-slice) and attend over all max_len positions under `mask`
        (B|1, 1, T, max_len)."""
        q, k, v = self.project_qkv(x)  # (B, h, T, d)
        k, v = tf.cast(k, k_buf.dtype), tf.cast(v, v_buf.dtype)
        ctx = attend_cached(q, k_buf, v_buf, k, v, cache_index, mask, scale=self.scale)
        # zeros computed from ctx, added to what is written: the writes then depend on the
        # reads of the old buffers, and XLA, knowing their order, updates the buffers in place
        # (with the reads unordered it copied every self-attention buffer twice per step)
        after = tf.maximum(-tf.abs(ctx[:, :, :1, :1]), 0.0)  # (B, h, 1, 1) zeros
        start = [0, 0, tf.cast(cache_index, tf.int32), 0]
        k_buf = keras.ops.slice_update(k_buf, start, k + tf.cast(after, k.dtype))
        v_buf = keras.ops.slice_update(v_buf, start, v + tf.cast(after, v.dtype))
        return self._out(ctx), k_buf, v_buf

    def step_cross(self, x: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask: Mask | None) -> tf.Tensor:
        """Cross-attention against precomputed k/v (Be, h, S, d) for B = Be * beams queries;
        beams of one example attend together, k/v are never repeated or reordered."""
        q = self.project_q(x)  # (B, h, T, d)
        b, t = tf.shape(q)[0], tf.shape(q)[2]
        h, d = self.num_heads, self.head_dim
        be = tf.shape(k)[0]
        beams = b // be
        q = tf.reshape(tf.transpose(tf.reshape(q, [be, beams, h, t, d]), [0, 2, 1, 3, 4]),
                       [be, h, beams * t, d])  # (Be, h, beams*T, d)
        ctx, _ = attend(q, k, v, mask, scale=self.scale)  # (Be, h, beams*T, d)
        ctx = tf.reshape(tf.transpose(tf.reshape(ctx, [be, h, beams, t, d]), [0, 2, 1, 3, 4]),
                         [b, h, t, d])  # (B, h, T, d)
        return self._out(ctx)

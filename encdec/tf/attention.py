"""`Attention` for BERT and GPT-2 (self and cross), its masks and caches; plus the shared
numerics (activations, initialisers, the loss) of the Keras backend.

Follows transformers' `BertSelfAttention` / `BertCrossAttention` / `GPT2Attention` with the
reference's default SDPA masks: padding masks act on keys only, the decoder's padding mask is
and-ed with the causal mask, and a query row with no visible key outputs zeros (what the
reference's boolean SDPA mask gives). Masks are additive with fill `dtype.min`; softmax in fp32.

Two caches: the reference's legacy tuple `(k, v)` grown by concatenation (public forward), and
the fixed-size static cache of the decoding contract (`step_self` / `step_cross`), written with
a dynamic-update-slice so that it traces under `tf.function(jit_compile=True)`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import keras
import tensorflow as tf

from encdec.core.seq2seq import IGNORE_INDEX

# --- leaf numerics ------------------------------------------------------------------------


def _gelu_fast(x: tf.Tensor) -> tf.Tensor:  # transformers' FastGELUActivation
    return 0.5 * x * (1.0 + tf.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_new(x: tf.Tensor) -> tf.Tensor:  # transformers' NewGELUActivation (tanh approximation)
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3.0))))


ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),  # exact erf GELU (BERT)
    "gelu_new": _gelu_new,  # GPT-2
    "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_fast": _gelu_fast,
    "relu": tf.nn.relu,
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "tanh": tf.tanh,
}


_init = threading.local()


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Inside this block, matrices are created as zeros instead of drawn at random: the caller
    is about to overwrite every one from a checkpoint (drawing them would cost time, and the
    random generator's temporaries raise the load's peak memory)."""
    old = getattr(_init, "skip", False)
    _init.skip = True
    try:
        yield
    finally:
        _init.skip = old


def normal(std: float) -> keras.initializers.Initializer:
    """The reference's `normal_(0, std)` init for matrices and embeddings."""
    if getattr(_init, "skip", False):
        return keras.initializers.Zeros()
    return keras.initializers.RandomNormal(mean=0.0, stddev=std)


def dense(units: int, name: str, std: float, use_bias: bool = True) -> keras.layers.Dense:
    """A Linear / GPT-2 Conv1D: kernel (in, out), bias zero-initialised."""
    return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=normal(std), name=name)


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
    """The reference's `ForCausalLMLoss`: position t predicts label t + 1."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


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


def causal_mask(q_len: int | tf.Tensor, past: int | tf.Tensor, kv_len: int | tf.Tensor,
                dtype: tf.DType, padding: tf.Tensor | None = None) -> Mask:
    """Key p is visible to query t iff p <= past + t and (p is not padding); padding (B, kv_len)."""
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


# --- attention ----------------------------------------------------------------------------

def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, mask: Mask | None, *, scale: float,
           dropout: keras.layers.Dropout | None = None, training: bool = False,
           ) -> tuple[tf.Tensor, tf.Tensor]:
    """softmax(q k^T * scale + bias) v: q (B, h, T, d), k/v (B, h, S, d) -> ((B, h, T, d),
    probs (B, h, T, S))."""
    scores = tf.matmul(q, k, transpose_b=True) * scale  # (B, h, T, S)
    if mask is not None:
        scores = scores + mask.bias
    probs = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), v.dtype)
    if mask is not None and mask.keep is not None:
        probs = probs * mask.keep
    dropped = dropout(probs, training=training) if dropout is not None else probs
    return tf.matmul(dropped, v), probs


class Attention(keras.layers.Layer):
    """Multi-head attention: BERT (`query`/`key`/`value`) or GPT-2 (`c_attn` [+ `q_attn`],
    `c_proj`) flavour, self- or cross-attention. BERT's output projection lives in its caller
    (`attention.output.dense`, as in the reference); GPT-2's `c_proj` is applied here."""

    def __init__(self, hidden_size: int, num_heads: int, *, gpt2: bool, cross: bool,
                 dropout: float = 0.0, resid_dropout: float = 0.0, scale: float | None = None,
                 std: float = 0.02, proj_std: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gpt2, self.cross = gpt2, cross
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.hidden_size = hidden_size
        self.scale = self.head_dim ** -0.5 if scale is None else scale
        self.dropout = keras.layers.Dropout(dropout, name="dropout")
        if gpt2:
            self.c_attn = dense((2 if cross else 3) * hidden_size, "c_attn", std)
            if cross:
                self.q_attn = dense(hidden_size, "q_attn", std)
            self.c_proj = dense(hidden_size, "c_proj", std if proj_std is None else proj_std)
            self.resid_dropout = keras.layers.Dropout(resid_dropout, name="resid_dropout")
        else:
            self.query = dense(hidden_size, "query", std)
            self.key = dense(hidden_size, "key", std)
            self.value = dense(hidden_size, "value", std)
        self.built = True  # sublayers create their variables on the first call

    def _heads(self, x: tf.Tensor) -> tf.Tensor:  # (B, T, h*d) -> (B, h, T, d)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [b, t, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def project_q(self, x: tf.Tensor) -> tf.Tensor:
        """Queries (B, h, T, d) of a cross-attention, or of a BERT self-attention."""
        return self._heads(self.q_attn(x) if self.gpt2 else self.query(x))

    def project_kv(self, states: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Keys and values (B, h, S, d) from the attended states (cross-attention)."""
        if self.gpt2:
            k, v = tf.split(self.c_attn(states), 2, axis=2)
            return self._heads(k), self._heads(v)
        return self._heads(self.key(states)), self._heads(self.value(states))

    def project_qkv(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if self.gpt2:
            q, k, v = tf.split(self.c_attn(x), 3, axis=2)  # GPT-2's fused projection
            return self._heads(q), self._heads(k), self._heads(v)
        return self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))

    def _out(self, ctx: tf.Tensor, training: bool = False) -> tf.Tensor:
        b, t = tf.shape(ctx)[0], tf.shape(ctx)[2]  # (B, h, T, d) -> (B, T, hidden)
        out = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [b, t, self.hidden_size])
        return self.resid_dropout(self.c_proj(out), training=training) if self.gpt2 else out

    def call(self, x: tf.Tensor, attn_mask: Mask | None = None, *, states: tf.Tensor | None = None,
             past: tuple[tf.Tensor, tf.Tensor] | None = None, output_attentions: bool = False,
             training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None, tuple]:
        """x (B, T, hidden) -> (out (B, T, hidden), attention probs or None, (k, v) for the cache).

        Self-attention appends its new keys/values to `past`; cross-attention reuses `past`
        when given, else projects `states` (B, S, hidden). (`attn_mask`, not `mask`: Keras
        reserves a `call` argument named `mask` for its own masking.)
        """
        if self.cross:
            q = self.project_q(x)
            k, v = past if past is not None else self.project_kv(states)
        else:
            q, k, v = self.project_qkv(x)
            if past is not None:
                k, v = tf.concat([past[0], k], axis=2), tf.concat([past[1], v], axis=2)
        ctx, probs = attend(q, k, v, attn_mask, scale=self.scale, dropout=self.dropout,
                            training=training)
        return self._out(ctx, training), probs if output_attentions else None, (k, v)

    # --- static cache (decoding contract) ------------------------------------------------

    def step_self(self, x: tf.Tensor, k_buf: tf.Tensor, v_buf: tf.Tensor,
                  cache_index: int | tf.Tensor, mask: Mask,
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Write the T new keys/values at `cache_index` of the (B, h, max_len, d) buffers
        (dynamic-update-slice) and attend over all max_len positions under `mask`
        (B|1, 1, T, max_len)."""
        q, k, v = self.project_qkv(x)  # (B, h, T, d)
        start = [0, 0, tf.cast(cache_index, tf.int32), 0]
        k_buf = keras.ops.slice_update(k_buf, start, tf.cast(k, k_buf.dtype))
        v_buf = keras.ops.slice_update(v_buf, start, tf.cast(v, v_buf.dtype))
        ctx, _ = attend(q, k_buf, v_buf, mask, scale=self.scale)
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

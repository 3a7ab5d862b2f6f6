"""Layer-level numerics of encdec.tf.layers against transformers / the core: activations,
the loss, mask semantics, and beam-grouped cross-attention against repeated K/V."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from encdec.core import seq2seq
from encdec.core.registry import BERT_ATTENTION, GPT2_CROSS_ATTENTION
from encdec.tf.layers import (
    ACTIVATIONS,
    Attention,
    Dense,
    causal_lm_loss,
    causal_mask,
    cross_entropy,
    padding_mask,
)
from tests.conftest import make_batch, max_diff


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_against_hf_activations(name):
    import torch
    from transformers.activations import ACT2FN

    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    ref = ACT2FN[name](torch.from_numpy(x)).numpy()
    assert max_diff(ref, ACTIVATIONS[name](tf.constant(x))) < 1e-6


def test_cross_entropy_matches_core():
    b = make_batch()
    logits = np.random.default_rng(0).normal(size=(*b["labels"].shape, 99)).astype(np.float32)
    assert abs(float(cross_entropy(logits, b["labels"]))
               - seq2seq.cross_entropy(logits, b["labels"])) < 1e-6
    shifted = seq2seq.cross_entropy(logits[:, :-1], b["labels"][:, 1:])
    assert abs(float(causal_lm_loss(logits, b["labels"])) - shifted) < 1e-6


def test_mask_semantics():
    pad = tf.constant([[1, 1, 1, 0], [0, 1, 1, 1]])
    m = causal_mask(2, 2, 2, 4, tf.float32, pad)  # queries at positions 2, 3 over 4 keys
    allowed = m.bias.numpy() == 0  # (B, 1, Tq, Tk)
    want = np.array([[[1, 1, 1, 0], [1, 1, 1, 0]], [[0, 1, 1, 0], [0, 1, 1, 1]]], bool)
    np.testing.assert_array_equal(allowed[:, 0], want)
    assert m.bias.numpy().min() == np.finfo(np.float32).min
    p = padding_mask(tf.constant([[1, 0], [0, 0]]), tf.float32)
    np.testing.assert_array_equal(p.keep.numpy()[:, 0, 0, 0], [1.0, 0.0])  # empty row -> zeros


@pytest.mark.parametrize("names", [BERT_ATTENTION, GPT2_CROSS_ATTENTION], ids=["bert", "gpt2"])
def test_step_cross_groups_beams_without_repeating_kv(names):
    attn = Attention(16, 4, names, cross=True, name="crossattention")
    rng = np.random.default_rng(0)
    states = tf.constant(rng.normal(size=(2, 5, 16)), tf.float32)  # (Be, S, H)
    x = tf.constant(rng.normal(size=(6, 2, 16)), tf.float32)  # (Be * 3 beams, T, H)
    enc_mask = tf.constant([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    attn(x[:2], padding_mask(enc_mask, tf.float32), states=states)  # build
    k, v = attn.project_kv(states)  # (Be, h, S, d)
    grouped = attn.step_cross(x, k, v, padding_mask(enc_mask, tf.float32))
    rep = tf.repeat(states, 3, axis=0)
    full, _, _ = attn(x, padding_mask(tf.repeat(enc_mask, 3, axis=0), tf.float32), states=rep)
    assert max_diff(full, grouped) < 1e-6


def test_embedding_gradient_is_dense_and_adam_steps_it_as_torch():
    """A row looked up n times gets one dense gradient (the sum), so Adam moves it by lr, as
    torch's embedding + AdamW does; TF's IndexedSlices would have moved it up to sqrt(n) lr."""
    import keras
    import tensorflow as tf
    import torch

    from encdec.tf.layers import embed

    table = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    ids, weights = [[0, 0, 0, 0, 2]], np.array([1.0, -2.0, 3.0], np.float32)
    layer = embed(5, 3, "e")
    layer.build((None,))
    layer.embeddings.assign(table)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(ids)) * weights)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.Tensor) and not isinstance(grad, tf.IndexedSlices)
    keras.optimizers.Adam(0.1, epsilon=1e-8).apply([grad], layer.trainable_variables)

    ref = torch.nn.Embedding(5, 3)
    ref.weight.data = torch.from_numpy(table.copy())
    opt = torch.optim.Adam(ref.parameters(), lr=0.1, eps=1e-8)
    (ref(torch.tensor(ids)) * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(grad.numpy(), ref.weight.grad.numpy(), rtol=0, atol=0)
    opt.step()
    np.testing.assert_allclose(layer.embeddings.numpy(), ref.weight.detach().numpy(), atol=1e-6)


def test_dense_bias_is_not_output_fused_into_a_matrix_vector_dot():
    """XLA's CPU compiler fuses `dot + bias` into one slower gemv kernel when the dot has one
    row (batch-1 decoding); `Dense` adds its bias as `x - (-bias)` (the same bits as `+`), which
    keeps the dot plain. The values agree to rounding (the fused kernel starts its sums from
    the bias)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 1, 256)).astype(np.float32))
    weights = [rng.normal(size=(256, 512)).astype(np.float32),
               rng.normal(size=512).astype(np.float32)]
    layers = {"keras": keras.layers.Dense(512), "encdec": Dense(512)}
    for layer in layers.values():
        layer.build(x.shape)
        layer.set_weights(weights)
    out, hlo = {}, {}
    for name, layer in layers.items():
        fn = tf.function(layer.__call__, jit_compile=True, autograph=False)
        out[name] = fn(x).numpy()
        hlo[name] = fn.experimental_get_compiler_ir(x)(stage="optimized_hlo")
    np.testing.assert_allclose(out["encdec"], out["keras"], rtol=1e-5, atol=1e-5)
    assert "kind=kOutput" in hlo["keras"]  # the pattern this guards against still exists
    assert "kind=kOutput" not in hlo["encdec"]

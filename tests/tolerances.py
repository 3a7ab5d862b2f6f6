"""The one tolerance table of the test suite (DESIGN.md's bounds, fp32 on CPU), and the
comparison every parity test uses. A bound looser than DESIGN.md's carries its reason."""

from __future__ import annotations

import numpy as np

# backend vs backend and backend vs transformers: logits, loss, hidden states, attentions
FORWARD = 1e-5
# incremental decoding with a cache vs one full forward
CACHE = 1e-5
# generation scores (processed log-probabilities per step, beam scores) vs transformers
SCORES = 1e-5
# save in one backend, load in another: bit-identical tensors
SAVE_LOAD = 0.0
# Gradients of the loss, backend vs backend. Looser than FORWARD because DESIGN.md bounds
# forward quantities only: a gradient entry sums over every batch position and both stacks'
# backward passes, whose fp32 reduction order each framework chooses (measured up to ~3e-5).
GRAD = 1e-4
# Encoder outputs at PADDED query positions of a real checkpoint (outputs nobody reads; real
# tokens are held to FORWARD). Those rows are out of distribution for the trained weights: each
# framework's last-ulp matmul/erf differences (~1e-6 per layer) grow there over 6 layers (values
# ~10) to ~5e-5 between TF and torch, and the fp32 reference is itself ~4e-5 off its float64
# result (flax vs float64 measured 1.47e-5 with jax 0.10.2).
PADDED_ROWS = 1e-4


def max_abs_diff(a, b, what: str = "") -> float:
    """The max abs difference of two arrays (or equally long nested tuples of arrays), float64;
    shapes must agree. Equal infinities (masked scores) count as no difference, any other
    infinity or NaN as an infinite one."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), (what, len(a), len(b))
        return max((max_abs_diff(x, y, f"{what}[{i}]")
                    for i, (x, y) in enumerate(zip(a, b, strict=True))), default=0.0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    if not a.size:
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max())


def assert_close(a, b, atol: float, what: str) -> None:
    """Assert `max_abs_diff(a, b) <= atol`, naming `what` and the difference."""
    diff = max_abs_diff(a, b, what)
    assert diff <= atol, f"{what}: max |diff| {diff:.3g} > {atol}"
# bfloat16 vs float32 logits of the same weights, relative to the fp32 logits' scale
# (max |logit|): bf16 keeps 8 significant bits (relative rounding 2**-9 ≈ 2e-3 per weight and
# per activation); over 2 x 2 layers plus embeddings and the LM head the errors add up to
# ~1% measured on the tiny test models (and ~0.5-2% on bert-base, benchmarks/bf16.py). 5e-2
# (≈ 25 x 2**-9), the converter's bfloat16 bound (encdec/convert/backends.py), with headroom.
BF16_LOGITS = 5e-2
# Weights after the demo's trainers took a few AdamW steps from the same weights on the same
# batches (torch AdamW, Keras AdamW under fit, optax adamw under nnx.jit), backend vs backend.
# Adam divides each gradient entry by its own running scale, so an entry whose gradient is
# rounding noise moves by up to the learning rate in either direction: the attention keys'
# biases (softmax ignores a shift, their true gradient is 0) differ by up to 4.9e-4 after 4
# steps at lr 3e-4 (measured); every other entry agrees far closer. Bounded by steps x lr.
TRAIN_STEPS = 4 * 3e-4

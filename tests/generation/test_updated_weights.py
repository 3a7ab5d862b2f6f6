"""`generate` uses the model's current weights, in every backend: after an optimizer step and
after weights loaded into the model through the framework's own API (`load_state_dict`,
`set_weights`, `nnx.update`), the tokens and scores are those of a fresh model holding the same
weights. This guards fast decoding paths that derive copies of the weights (fused or transposed
matrices, compiled programs with captured constants): a copy must follow the weights it was
derived from."""

from __future__ import annotations

import numpy as np
import pytest

from tests import tolerances as tol
from tests.conftest import make_batch
from tests.harness.backends import ADAPTERS

BACKENDS = list(ADAPTERS)
NAME = "bert2bert"
NEW = 6  # new tokens per call
LR = 0.05  # large: one AdamW step moves every weight by ~LR, far beyond the init scale 0.02


def decode(adapter, model, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Greedy sequences and scores, and beam-2 sequences, as numpy."""
    x = adapter.inputs({"input_ids": ids, "attention_mask": mask})
    greedy = model.generate(x["input_ids"], x["attention_mask"], max_new_tokens=NEW,
                            min_new_tokens=NEW, output_scores=True,
                            return_dict_in_generate=True)
    beams = adapter.generate(model, ids, mask, num_beams=2, max_new_tokens=NEW,
                             min_new_tokens=NEW)
    return dict(sequences=np.asarray(greedy["sequences"]),
                scores=np.stack([np.asarray(s) for s in greedy["scores"]]), beams=beams)


def optimizer_step(backend: str, model, batch: dict[str, np.ndarray]) -> None:
    """One AdamW step on the loss of `batch` (labels), the backend's usual way."""
    if backend == "pt":
        import torch

        opt = torch.optim.AdamW(model.parameters(), lr=LR)
        model(**{k: torch.from_numpy(v) for k, v in batch.items()}).loss.backward()
        opt.step()
    elif backend == "tf":
        import keras
        import tensorflow as tf

        opt = keras.optimizers.AdamW(learning_rate=LR)
        with tf.GradientTape() as tape:
            loss = model(**{k: tf.constant(v) for k, v in batch.items()}).loss
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables, strict=True))
    else:
        import jax.numpy as jnp
        import optax
        from flax import nnx

        opt = nnx.Optimizer(model, optax.adamw(LR), wrt=nnx.Param)
        inputs = {k: jnp.asarray(v) for k, v in batch.items()}
        opt.update(model, nnx.grad(lambda m: m(**inputs).loss)(model))


def load_weights(backend: str, model, other, how: str) -> None:
    """Put `other`'s weights into `model` through the framework's own API."""
    if backend == "pt":
        model.load_state_dict(other.state_dict(), assign=how == "assign")
    elif backend == "tf":
        model.set_weights(other.get_weights())
    else:
        from flax import nnx

        nnx.update(model, nnx.state(other))


def assert_same(got: dict, want: dict, what: str) -> None:
    for key in ("sequences", "beams"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{what}: {key}")
    tol.assert_close(got["scores"], want["scores"], tol.SCORES, f"{what}: scores")


def assert_changed(got: dict, before: dict, what: str) -> None:
    assert not np.array_equal(got["sequences"], before["sequences"]), f"{what}: same tokens"
    assert tol.max_abs_diff(got["scores"], before["scores"]) > 1e-2, f"{what}: same scores"


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_after_an_optimizer_step(backend, reference_dir, tmp_path):
    adapter = ADAPTERS[backend]()
    model = adapter.load(reference_dir(NAME))
    batch = make_batch(0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    before = decode(adapter, model, ids, mask)  # builds whatever generate derives and caches
    optimizer_step(backend, model, {k: batch[k] for k in ("input_ids", "attention_mask",
                                                          "labels")})
    after = decode(adapter, model, ids, mask)
    assert_changed(after, before, f"{backend} after one AdamW step")
    adapter.save(model, tmp_path)
    fresh = decode(adapter, adapter.load(tmp_path), ids, mask)
    assert_same(after, fresh, f"{backend}: the stepped model vs a fresh load of its save")


# torch's load_state_dict copies into the model's tensors, or (assign=True) swaps them for new
# ones; Keras' set_weights and nnx.update have one way
LOADS = [(b, "copy") for b in BACKENDS] + [("pt", "assign")]


@pytest.mark.parametrize(("backend", "how"), LOADS, ids=[f"{b}-{h}" for b, h in LOADS])
def test_generate_after_loading_other_weights(backend, how, reference_dir):
    adapter = ADAPTERS[backend]()
    model = adapter.load(reference_dir(NAME, 0))
    other = adapter.load(reference_dir(NAME, 1))
    ids, mask = make_batch(0)["input_ids"], make_batch(0)["attention_mask"]
    before = decode(adapter, model, ids, mask)
    want = decode(adapter, other, ids, mask)
    load_weights(backend, model, other, how)
    after = decode(adapter, model, ids, mask)
    assert_changed(after, before, f"{backend} after loading other weights ({how})")
    assert_same(after, want, f"{backend}: loaded weights vs the model they came from ({how})")

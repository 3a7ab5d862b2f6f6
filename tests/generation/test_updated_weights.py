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
from tests.generation import oracle
from tests.harness.backends import ADAPTERS

NAME = "bert2bert"
NEW = 6  # new tokens per call
LR = 0.05  # large: one AdamW step moves every weight by ~LR (the oracle's weights: std 0.15)


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


def loss(adapter, model, batch: dict[str, np.ndarray]) -> float:
    return float(np.asarray(adapter.forward(model, batch)["loss"]))


# torch's load_state_dict copies into the model's tensors, or (assign=True) swaps them for new
# ones; Keras' set_weights and nnx.update have one way. tf and flax: CI (each compiles its
# greedy and beam programs for two models; pt's checks are the same on the host side)
LOADS = [("pt", "copy"), ("pt", "assign"), pytest.param("tf", "copy", marks=pytest.mark.slow),
         pytest.param("flax", "copy", marks=pytest.mark.slow)]


# the encoder's pooler gets no gradient in a seq2seq loss (as in the reference): Keras notes it
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
@pytest.mark.parametrize(("backend", "how"), LOADS, ids=["pt-copy", "pt-assign", "tf", "flax"])
def test_generate_follows_loaded_weights_and_an_optimizer_step(backend, how, tmp_path):
    """A model decodes (building whatever generate derives and caches), then: weights of another
    seed loaded through the framework's API give that model's tokens and scores; one AdamW step
    lowers the loss and changes them, and they equal those of the stepped model's save loaded
    into the other model."""
    adapter = ADAPTERS[backend]()
    model = adapter.load(oracle.checkpoint(NAME, 0))
    other = adapter.load(oracle.checkpoint(NAME, 1))
    batch = {k: v for k, v in make_batch(0).items() if k != "decoder_input_ids"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    before = decode(adapter, model, ids, mask)
    want = decode(adapter, other, ids, mask)
    load_weights(backend, model, other, how)
    loaded = decode(adapter, model, ids, mask)
    assert_changed(loaded, before, f"{backend} after loading other weights ({how})")
    assert_same(loaded, want, f"{backend}: loaded weights vs the model they came from ({how})")
    loss_before = loss(adapter, model, batch)
    optimizer_step(backend, model, batch)
    assert loss(adapter, model, batch) < loss_before - 0.1, backend
    stepped = decode(adapter, model, ids, mask)
    assert_changed(stepped, loaded, f"{backend} after one AdamW step")
    adapter.save(model, tmp_path)
    load_weights(backend, other, adapter.load(tmp_path), how)
    assert_same(stepped, decode(adapter, other, ids, mask),
                f"{backend}: the stepped model vs its save loaded into another model")

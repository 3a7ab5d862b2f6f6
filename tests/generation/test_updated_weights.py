"""`generate` uses the model's current weights, in every backend: after weights loaded into the
model through the framework's own API (`load_state_dict`, `set_weights`, `nnx.update`) and after
a training step the framework's usual way (torch's AdamW step; Keras' `compile` + `fit`,
through the compiled `train_step`; optax under `nnx.jit`), the tokens and scores are those of
a fresh model holding the same weights. This guards fast decoding paths that derive copies of
the weights (fused or transposed matrices, compiled programs with captured constants): a copy
must follow the weights it was derived from.

The training step is each framework's own training loop too, one decoder family per backend:
it lowers the loss; Keras' `fit` on a dataset of dicts with labels (the model's own loss, no
`loss=` in `compile`), LayerDrop on, the fixed sinusoidal table (Pegasus) left as it was, and
the generate programs traced before it run again after it; `nnx.jit` with dropout and LayerDrop
on draws fresh masks on each call of the compiled step. (Gradients against the reference:
tests/harness/test_training.py; torch's gradient checkpointing: tests/pt/test_training.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from tests import tolerances as tol
from tests.conftest import pair_batch
from tests.generation import oracle
from tests.harness.backends import ADAPTERS

NEW = 6  # new tokens per call
LR = 0.05  # large: one AdamW step moves every weight by ~LR (the oracle's weights: std 0.15)
LAYERDROP = 0.3


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


def train_step(backend: str, model, batch: dict[str, np.ndarray]) -> None:
    """One AdamW step on the loss of `batch` (labels), the backend's usual way."""
    if backend == "pt":
        import torch

        opt = torch.optim.AdamW(model.parameters(), lr=LR)
        model(**{k: torch.from_numpy(v) for k, v in batch.items()}).loss.backward()
        opt.step()
    elif backend == "tf":
        fit(model, batch)
    else:
        nnx_jit_step(model, batch)


def fit(model, batch: dict[str, np.ndarray]) -> None:
    """Keras: `compile` with no loss + `fit` on a dataset of dicts with labels (one batch, one
    step), LayerDrop on; the sinusoidal position table is not trained."""
    import keras
    import tensorflow as tf

    table = ADAPTERS["tf"]().variable(model, "decoder.model.decoder.embed_positions.weight")
    frozen, layerdrop = table.numpy(), model.config.decoder.decoder_layerdrop
    model.config.decoder.decoder_layerdrop = LAYERDROP
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=LR))
    data = tf.data.Dataset.from_tensor_slices(batch).batch(len(batch["labels"]))
    try:
        history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    finally:  # as flax's step: LayerDrop for this step only, not in the saved config
        model.config.decoder.decoder_layerdrop = layerdrop
    assert np.isfinite(history.history["loss"]).all()
    np.testing.assert_array_equal(table.numpy(), frozen)


def nnx_jit_step(model, batch: dict[str, np.ndarray]) -> None:
    """Flax: `nnx.Optimizer` updated inside one `nnx.jit` step, in training mode with dropout
    and LayerDrop on. The step runs twice: at learning rate 0 first (the weights stay), so the
    two calls' losses differ only by their dropout and LayerDrop masks, which must be drawn
    afresh on each call of the compiled program; then at LR."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    layerdrop = model.decoder.model.decoder.layerdrop
    layerdrop.rate = LAYERDROP
    opt = nnx.Optimizer(model, optax.adamw(lambda n: jnp.where(n == 0, 0.0, LR)),
                        wrt=nnx.Param)
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}

    @nnx.jit
    def step(model, opt, inputs):
        loss, grads = nnx.value_and_grad(lambda m: m(**inputs).loss)(model)
        opt.update(model, grads)
        return loss

    model.train()
    try:
        losses = [float(step(model, opt, inputs)) for _ in range(2)]
    finally:  # the rate is part of the model's structure, which keys generate's programs
        model.eval()
        layerdrop.rate = 0.0
    assert np.isfinite(losses).all() and losses[0] != losses[1], losses
    assert int(opt.step[...]) == 2


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


def traces(backend: str) -> dict:
    """How many times each generate program was traced (tf, flax), {} for pt."""
    if backend == "pt":
        return {}
    import importlib

    return dict(importlib.import_module(f"encdec.{backend}.generation").TRACES)


# torch's load_state_dict copies into the model's tensors, or (assign=True) swaps them for new
# ones; Keras' set_weights and nnx.update have one way. One decoder family per backend: BERT
# and GPT-2 in pt (the fast subset), Pegasus in tf (LayerDrop in `fit`, the fixed sinusoidal
# table), BART in flax (LayerDrop under `nnx.jit`). tf and flax: CI (each compiles its greedy
# and beam programs for two models and a training step; pt's checks are the same on the host)
CASES = [("pt", "copy", "bert2bert"), ("pt", "assign", "bert2gpt2"),
         pytest.param("tf", "copy", "bert2pegasus", marks=pytest.mark.slow),
         pytest.param("flax", "copy", "bert2bart", marks=pytest.mark.slow)]


# the encoder's pooler gets no gradient in a seq2seq loss (as in the reference): Keras notes it
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
@pytest.mark.parametrize(("backend", "how", "name"), CASES,
                         ids=["pt-copy", "pt-assign", "tf-fit", "flax-nnx_jit"])
def test_generate_follows_loaded_weights_and_a_training_step(backend, how, name, tmp_path):
    """A model decodes (building whatever generate derives and caches), then: weights of another
    seed loaded through the framework's API give that model's tokens and scores; one training
    step lowers the loss and changes them, and they equal those of the stepped model's save
    loaded into the other model; no generate program is traced again."""
    if backend == "tf":
        import keras

        keras.utils.set_random_seed(0)  # the dropout and LayerDrop draws of `fit`
    adapter = ADAPTERS[backend]()
    model = adapter.load(oracle.checkpoint(name, 0))
    other = adapter.load(oracle.checkpoint(name, 1))
    batch = {k: v for k, v in pair_batch(name).items() if k != "decoder_input_ids"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    before = decode(adapter, model, ids, mask)
    want = decode(adapter, other, ids, mask)
    traced = traces(backend)
    load_weights(backend, model, other, how)
    loaded = decode(adapter, model, ids, mask)
    assert_changed(loaded, before, f"{backend} after loading other weights ({how})")
    assert_same(loaded, want, f"{backend}: loaded weights vs the model they came from ({how})")
    loss_before = loss(adapter, model, batch)
    train_step(backend, model, batch)
    assert loss(adapter, model, batch) < loss_before - 0.1, backend
    stepped = decode(adapter, model, ids, mask)
    assert_changed(stepped, loaded, f"{backend} after one training step")
    adapter.save(model, tmp_path)
    load_weights(backend, other, adapter.load(tmp_path), how)
    assert_same(stepped, decode(adapter, other, ids, mask),
                f"{backend}: the stepped model vs its save loaded into another model")
    assert traces(backend) == traced, "a generate program was traced again"
